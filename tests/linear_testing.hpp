#pragma once
/// \file Shared helpers for the linear-policy tests: a policy's error against Dense, and llama2.c's RMSNorm.

#include <cmath>

#include "polyformer/core/context.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/linear/dense.hpp"

namespace pft {

/// ||y_policy − y_fp32|| / ||y_fp32|| for x through Policy::from_dense and the Dense layer of the same weight and bias.
template <typename Policy>
double relative_error_vs_dense(const polyformer::Matrix& weight, const polyformer::Vector& bias,
                               const polyformer::Matrix& x, int threads = 1) {
  namespace pf = polyformer;
  const pf::Dense dense(weight, bias);
  const Policy layer = Policy::from_dense(dense);
  pf::Matrix y_fp32(x.rows(), weight.rows()), y(x.rows(), weight.rows());
  dense.forward(pf::cview(x), pf::view(y_fp32), pf::Context{threads});
  layer.forward(pf::cview(x), pf::view(y), pf::Context{threads});
  return (y.cast<double>() - y_fp32.cast<double>()).norm() / y_fp32.cast<double>().norm();
}

/// RMSNorm of every row with gain g (eps 1e-5, as llama2.c).
inline polyformer::Matrix rms_normed(const polyformer::Matrix& x, const polyformer::Vector& g) {
  polyformer::Matrix y(x.rows(), x.cols());
  for (polyformer::Index i = 0; i < x.rows(); ++i) {
    const double ms = x.row(i).cast<double>().squaredNorm() / double(x.cols());
    y.row(i) = (x.row(i) * static_cast<float>(1.0 / std::sqrt(ms + 1e-5))).cwiseProduct(g.transpose());
  }
  return y;
}

}  // namespace pft
