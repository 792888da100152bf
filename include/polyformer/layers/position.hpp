#pragma once
/// \file Absolute position policies added to the input of a stack: none, sinusoidal (Vaswani et al.
/// 2017, §3.5) and learned (a trained table, as GPT-2 and BERT).

#include <cmath>
#include <string>
#include <utility>

#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// Adds nothing (the model has no absolute positions, or uses RoPE inside attention).
struct NoPosition {
  static constexpr bool enabled = false;
  struct Gradients {};  ///< nothing trains
  void add(MatrixView, Index, Index = 0) const noexcept {}
  Gradients make_gradients() const noexcept { return {}; }
  void backward(ConstMatrixView, Index, Gradients&, Index = 0) const noexcept {}
};

/// PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)), computed in double.
class SinusoidalPosition {
 public:
  static constexpr bool enabled = true;
  struct Gradients {};  ///< a fixed encoding: nothing trains
  SinusoidalPosition() = default;
  explicit SinusoidalPosition(double base) : base_(base) {}
  Gradients make_gradients() const noexcept { return {}; }
  /// The encoding is added, so the input's gradient is the output's: nothing to do.
  void backward(ConstMatrixView, Index, Gradients&, Index = 0) const noexcept {}

  /// The encoding of one position, written to out (dim).
  void encode(Index pos, float* out, Index dim) const noexcept {
    for (Index i = 0; i < dim; i += 2) {
      const double angle = static_cast<double>(pos) / std::pow(base_, static_cast<double>(i) / static_cast<double>(dim));
      out[i] = static_cast<float>(std::sin(angle));
      if (i + 1 < dim) out[i + 1] = static_cast<float>(std::cos(angle));
    }
  }

  /// x (batch·seq, d) += PE(first_position + s) on every sequence's row s.
  void add(MatrixView x, Index batch, Index first_position = 0) const {
    if (batch < 1 || x.rows() % batch != 0)
      throw shape_error(detail::cat("SinusoidalPosition::add: x has ", x.rows(), " rows, expected a multiple of batch ",
                                    batch));
    const Index seq = x.rows() / batch, d = x.cols();
    Vector pe(d);
    for (Index s = 0; s < seq; ++s) {
      encode(first_position + s, pe.data(), d);
      for (Index b = 0; b < batch; ++b) x.row(b * seq + s) += pe.transpose();
    }
  }

 private:
  double base_ = 10000.0;
};

/// A learned table (max_positions, d) added row by row.
class LearnedPosition {
 public:
  static constexpr bool enabled = true;
  LearnedPosition() = default;
  explicit LearnedPosition(Matrix table) : table_(std::move(table)) {}

  const Matrix& table() const noexcept { return table_; }  ///< (max_positions, d)
  Matrix& table() noexcept { return table_; }
  /// The table as "weight" (max_positions, d).
  void parameters(ParameterList& list, const std::string& prefix) { list.add_matrix(prefix + "weight", table_); }

  /// The table's gradient (max_positions, d); empty = frozen.
  struct Gradients {
    Matrix weight;
  };
  Gradients make_gradients() const { return {Matrix::Zero(table_.rows(), table_.cols())}; }
  /// "weight", as parameters() names it.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const {
    list.add_matrix(prefix + "weight", g.weight, table_.rows(), table_.cols());
  }
  /// The backward of add(): the rows of dy (batch·seq, d), the gradient of the sum, add into the table rows they
  /// read (the input's gradient is dy itself).
  void backward(ConstMatrixView dy, Index batch, Gradients& g, Index first_position = 0) const {
    const char* func = "LearnedPosition::backward";
    detail::check_gradient(func, "weight", g.weight, table_.rows(), table_.cols());
    if (!detail::live(g.weight)) return;
    check_cols(dy, table_.cols(), func, "dy");
    if (batch < 1 || dy.rows() % batch != 0 || first_position < 0 || first_position + dy.rows() / batch > table_.rows())
      throw shape_error(detail::cat(func, ": dy has ", dy.rows(), " rows for batch ", batch, " from position ",
                                    first_position, ", expected a multiple of batch within the table of ",
                                    table_.rows(), " positions"));
    const Index seq = dy.rows() / batch;
    for (Index s = 0; s < seq; ++s)
      for (Index b = 0; b < batch; ++b) g.weight.row(first_position + s) += dy.row(b * seq + s);
  }

  /// x (batch·seq, d) += table[first_position + s] on every sequence's row s.
  void add(MatrixView x, Index batch, Index first_position = 0) const {
    if (batch < 1 || x.rows() % batch != 0)
      throw shape_error(detail::cat("LearnedPosition::add: x has ", x.rows(), " rows, expected a multiple of batch ",
                                    batch));
    check_cols(x, table_.cols(), "LearnedPosition::add", "x");
    const Index seq = x.rows() / batch;
    if (first_position < 0 || first_position + seq > table_.rows())
      throw shape_error(detail::cat("LearnedPosition::add: positions ", first_position, "..", first_position + seq,
                                    " exceed the table of ", table_.rows(), " positions"));
    for (Index s = 0; s < seq; ++s)
      for (Index b = 0; b < batch; ++b) x.row(b * seq + s) += table_.row(first_position + s);
  }

 private:
  Matrix table_;
};

}  // namespace polyformer
