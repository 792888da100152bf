#pragma once
/// \file Eigen aliases for row-major float matrices and views over raw buffers.

#include <Eigen/Core>
#include <cstdint>

#include "polyformer/core/error.hpp"

namespace polyformer {

using Index = Eigen::Index;

/// Owned row-major matrix: activations are (n_tokens, features), weights (out, in) like nn.Linear.
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Owned vector (biases, norm gains).
using Vector = Eigen::Matrix<float, Eigen::Dynamic, 1>;

/// Row-major view with an arbitrary row stride (so a head's columns inside a wider matrix are a view).
using MatrixView = Eigen::Map<Matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstMatrixView = Eigen::Map<const Matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

/// A view over the whole of a matrix.
inline MatrixView view(Matrix& m) { return MatrixView(m.data(), m.rows(), m.cols(), Eigen::OuterStride<>(m.cols())); }
inline ConstMatrixView view(const Matrix& m) {
  return ConstMatrixView(m.data(), m.rows(), m.cols(), Eigen::OuterStride<>(m.cols()));
}
/// Read-only views of a matrix or of a writable view.
inline ConstMatrixView cview(const Matrix& m) { return view(m); }
inline ConstMatrixView cview(const MatrixView& m) {
  return ConstMatrixView(m.data(), m.rows(), m.cols(), Eigen::OuterStride<>(m.outerStride()));
}
/// Rows [row, row + rows) and columns [col, col + cols) of a view, as a view.
inline MatrixView block(MatrixView m, Index row, Index col, Index rows, Index cols) {
  return MatrixView(m.data() + row * m.outerStride() + col, rows, cols, Eigen::OuterStride<>(m.outerStride()));
}
inline ConstMatrixView block(ConstMatrixView m, Index row, Index col, Index rows, Index cols) {
  return ConstMatrixView(m.data() + row * m.outerStride() + col, rows, cols, Eigen::OuterStride<>(m.outerStride()));
}

/// A re-seatable read-only view (an Eigen::Map cannot be assigned to point elsewhere), for optional inputs
/// such as masks.
struct ConstMatrixRef {
  const float* data = nullptr;
  Index rows = 0, cols = 0, stride = 0;

  ConstMatrixRef() = default;
  ConstMatrixRef(const ConstMatrixView& v) : data(v.data()), rows(v.rows()), cols(v.cols()), stride(v.outerStride()) {}
  ConstMatrixRef(const Matrix& m) : data(m.data()), rows(m.rows()), cols(m.cols()), stride(m.cols()) {}
  ConstMatrixView view() const { return ConstMatrixView(data, rows, cols, Eigen::OuterStride<>(stride)); }
};

/// Resizes only when the shape changes, so a workspace sized once is reused without allocation.
inline void ensure_shape(Matrix& m, Index rows, Index cols) {
  if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
}

/// Throws shape_error unless m is (rows, cols); `who` is "Func: arg".
template <typename M>
void check_shape(const M& m, Index rows, Index cols, const char* func, const char* arg) {
  if (m.rows() != rows || m.cols() != cols)
    throw shape_error(detail::cat(func, ": ", arg, " has shape ", detail::shape_str(m.rows(), m.cols()),
                                  ", expected ", detail::shape_str(rows, cols)));
}

/// Throws shape_error unless m has `cols` columns.
template <typename M>
void check_cols(const M& m, Index cols, const char* func, const char* arg) {
  if (m.cols() != cols)
    throw shape_error(detail::cat(func, ": ", arg, " has shape ", detail::shape_str(m.rows(), m.cols()),
                                  ", expected (n, ", cols, ")"));
}

}  // namespace polyformer
