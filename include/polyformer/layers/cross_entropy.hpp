#pragma once
/// \file Cross-entropy over logits, the loss of next-token prediction: loss = mean over the counted rows of
/// −log softmax(logits_i)[target_i], as torch.nn.functional.cross_entropy with reduction='mean' and ignore_index.
/// Its gradient is (softmax(logits_i) − onehot(target_i)) / count per counted row, 0 for ignored rows.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/reduce.hpp"

namespace polyformer {

/// The mean cross-entropy of logits (n, vocab) against targets (n); a target equal to ignore_index is not counted.
/// With dlogits (n, vocab) non-empty, writes the loss's gradient there (it may alias logits). A batch with no counted
/// row has loss 0 and a zero gradient (torch gives NaN). Throws for a target outside 0..vocab−1 (but ignore_index).
inline double cross_entropy(ConstMatrixView logits, std::span<const int> targets, MatrixView dlogits,
                            int ignore_index = -100) {
  const char* func = "cross_entropy";
  const Index n = logits.rows(), vocab = logits.cols();
  if (static_cast<Index>(targets.size()) != n)
    throw shape_error(detail::cat(func, ": ", targets.size(), " targets for ", n, " rows of logits, expected as many"));
  const bool grad = dlogits.size() != 0;
  if (grad) check_shape(dlogits, n, vocab, func, "dlogits");
  Index counted = 0;
  for (Index i = 0; i < n; ++i) {
    const int t = targets[std::size_t(i)];
    if (t == ignore_index) continue;
    if (t < 0 || t >= vocab)
      throw config_error(detail::cat(func, ": target ", i, " is ", t, ", expected 0..", vocab - 1, " or ignore_index ",
                                     ignore_index));
    ++counted;
  }
  double loss = 0.0;
  const double inv = counted > 0 ? 1.0 / static_cast<double>(counted) : 0.0;
  for (Index i = 0; i < n; ++i) {
    const float* row = logits.data() + i * logits.outerStride();
    float* drow = grad ? dlogits.data() + i * dlogits.outerStride() : nullptr;
    const int t = targets[std::size_t(i)];
    if (t == ignore_index) {
      if (grad) std::fill(drow, drow + vocab, 0.0f);
      continue;
    }
    const float m = kernels::reduce_max(row, static_cast<std::size_t>(vocab));
    double sum = 0.0;
    for (Index j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(row[j] - m));
    const double log_z = static_cast<double>(m) + std::log(sum);
    loss += log_z - static_cast<double>(row[t]);
    if (grad) {  // each entry is read before it is written, so dlogits may alias logits
      for (Index j = 0; j < vocab; ++j) drow[j] = static_cast<float>(std::exp(static_cast<double>(row[j]) - log_z) * inv);
      drow[t] -= static_cast<float>(inv);
    }
  }
  return loss * inv;
}

}  // namespace polyformer
