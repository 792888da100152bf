#pragma once
/// \file Cross-entropy over logits, the loss of next-token prediction: loss = mean over the counted rows of
/// −log softmax(logits_i)[target_i], as torch.nn.functional.cross_entropy with reduction='mean' and ignore_index.
/// Its gradient is (softmax(logits_i) − onehot(target_i)) / count per counted row, 0 for ignored rows. With label
/// smoothing ε (Szegedy et al. 2016, torch's label_smoothing) the target is (1 − ε)·onehot + ε/vocab instead.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/reduce.hpp"

namespace polyformer {

/// Settings of cross_entropy beyond the logits and targets.
struct CrossEntropyOptions {
  int ignore_index = -100;       ///< a target equal to this is not counted
  double label_smoothing = 0.0;  ///< ε in [0, 1]: the target distribution is (1 − ε)·onehot + ε/vocab
};

namespace detail {

/// log Σ_j exp(row_j · scale) over n entries, in double; scale > 0.
inline double log_sum_exp(const float* row, Index n, double scale) {
  const double m = static_cast<double>(kernels::reduce_max(row, static_cast<std::size_t>(n))) * scale;
  double sum = 0.0;
  for (Index j = 0; j < n; ++j) sum += std::exp(static_cast<double>(row[j]) * scale - m);
  return m + std::log(sum);
}

/// The number of targets other than ignore_index; throws when their count differs from rows or one lies outside
/// 0..vocab−1.
inline Index count_targets(std::span<const int> targets, Index rows, Index vocab, int ignore_index, const char* func) {
  if (static_cast<Index>(targets.size()) != rows)
    throw shape_error(cat(func, ": ", targets.size(), " targets for ", rows, " rows of logits, expected as many"));
  Index counted = 0;
  for (Index i = 0; i < rows; ++i) {
    const int t = targets[std::size_t(i)];
    if (t == ignore_index) continue;
    if (t < 0 || t >= vocab)
      throw config_error(
          cat(func, ": target ", i, " is ", t, ", expected 0..", vocab - 1, " or ignore_index ", ignore_index));
    ++counted;
  }
  return counted;
}

/// Throws config_error unless 0 <= ε <= 1 (torch's bound).
inline void check_label_smoothing(double epsilon, const char* func) {
  if (!(epsilon >= 0.0 && epsilon <= 1.0))
    throw config_error(cat(func, ": label_smoothing is ", epsilon, ", expected 0..1"));
}

}  // namespace detail

/// The mean cross-entropy of logits (n, vocab) against targets (n), as torch.nn.functional.cross_entropy(logits,
/// targets, ignore_index=, label_smoothing=ε, reduction='mean'): each counted row adds (1 − ε)·(−log p_t) +
/// ε·mean_j(−log p_j), p = softmax(row), and the sum is divided by the number of counted rows m. With dlogits
/// (n, vocab) non-empty, writes the gradient (p − (1 − ε)·onehot(t) − ε/vocab) / m there, 0 on ignored rows (it may
/// alias logits). A batch with no counted row has loss 0 and a zero gradient (torch gives NaN). Throws for a target
/// outside 0..vocab−1 (but ignore_index) or ε outside 0..1. Rows run in parallel over ctx.threads, with the vector
/// exponential (float, the max subtracted; log Z and the loss in double); the result does not depend on the thread
/// count.
inline double cross_entropy(ConstMatrixView logits, std::span<const int> targets, MatrixView dlogits,
                            const CrossEntropyOptions& options, const Context& ctx) {
  const char* func = "cross_entropy";
  ctx.validate(func);
  const Index n = logits.rows(), vocab = logits.cols();
  detail::check_label_smoothing(options.label_smoothing, func);
  const bool grad = dlogits.size() != 0;
  if (grad) check_shape(dlogits, n, vocab, func, "dlogits");
  const Index counted = detail::count_targets(targets, n, vocab, options.ignore_index, func);
  const double eps = options.label_smoothing, keep = 1.0 - eps;
  const double spread = vocab > 0 ? eps / static_cast<double>(vocab) : 0.0;
  const double inv = counted > 0 ? 1.0 / static_cast<double>(counted) : 0.0;
  const auto v = static_cast<std::size_t>(vocab);
  const int threads = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), std::max<Index>(n, 1)));
  std::vector<double> row_loss(static_cast<std::size_t>(n), 0.0);
  std::vector<std::vector<float>> scratch(grad ? 0 : static_cast<std::size_t>(threads));  // (vocab) per thread
  parallel_chunks(n, threads, [&](Index begin, Index end, int id) {
    for (Index i = begin; i < end; ++i) {
      const float* row = logits.data() + i * logits.outerStride();
      float* work = grad ? dlogits.data() + i * dlogits.outerStride() : nullptr;  // e^(row − max), then the gradient
      const int t = targets[std::size_t(i)];
      if (t == options.ignore_index) {
        if (grad) std::fill(work, work + vocab, 0.0f);
        continue;
      }
      if (!grad) {
        auto& s = scratch[static_cast<std::size_t>(id)];
        s.resize(v);
        work = s.data();
      }
      const double target_logit = static_cast<double>(row[t]);
      double mean_logit = 0.0;  // for ε: mean_j(−log p_j) = log Z − mean_j logits_j
      if (eps != 0.0) {
        for (Index j = 0; j < vocab; ++j) mean_logit += static_cast<double>(row[j]);
        mean_logit /= static_cast<double>(vocab);
      }
      if (work != row) std::copy_n(row, v, work);  // everything above read the row: dlogits may alias it
      const float m = kernels::reduce_max(work, v);
      const float sum = kernels::exp_shifted_sum(work, v, m);  // >= 1: the max entry gives e^0
      const double log_z = static_cast<double>(m) + std::log(static_cast<double>(sum));
      const double nll = log_z - target_logit;
      row_loss[static_cast<std::size_t>(i)] = eps != 0.0 ? keep * nll + eps * (log_z - mean_logit) : nll;
      if (grad) {
        kernels::scale(work, static_cast<float>(inv / static_cast<double>(sum)), v);  // p / m
        if (spread != 0.0) {
          const float shift = static_cast<float>(spread * inv);
          for (Index j = 0; j < vocab; ++j) work[j] -= shift;
        }
        work[t] -= static_cast<float>(keep * inv);
      }
    }
  });
  double loss = 0.0;
  for (double x : row_loss) loss += x;  // in row order, whatever the threads
  return loss * inv;
}

/// cross_entropy on one thread.
inline double cross_entropy(ConstMatrixView logits, std::span<const int> targets, MatrixView dlogits,
                            const CrossEntropyOptions& options) {
  return cross_entropy(logits, targets, dlogits, options, Context{});
}

/// The mean cross-entropy without label smoothing; a target equal to ignore_index is not counted (see above).
inline double cross_entropy(ConstMatrixView logits, std::span<const int> targets, MatrixView dlogits,
                            int ignore_index = -100) {
  return cross_entropy(logits, targets, dlogits, CrossEntropyOptions{ignore_index, 0.0});
}

}  // namespace polyformer
