#pragma once
/// \file Training objectives beside next-token cross-entropy (layers/cross_entropy.hpp, which also does label
/// smoothing): knowledge distillation (Hinton et al. 2015; DistilBERT, Sanh et al. 2019), BERT's masked-LM
/// corruption (Devlin et al. 2019, §3.1), T5's span corruption (Raffel et al. 2020, §3.1.4) and sequence
/// classification over a pooled hidden state. The corruptions draw from a caller's std::mt19937_64 and turn its raw
/// 64-bit output into uniforms here (std::uniform_*_distribution differ between standard libraries), so a seed gives
/// the same batch everywhere.

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/cross_entropy.hpp"

namespace polyformer {

namespace detail {

/// A uniform double in [0, 1) from the top 53 bits of one draw.
inline double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1p-53; }

/// A uniform integer in [0, n), n > 0; draws below 2^64 mod n are rejected so that no value is favoured.
inline std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
  const std::uint64_t reject_below = (0 - n) % n;  // 2^64 mod n
  std::uint64_t x = rng();
  while (x < reject_below) x = rng();
  return x % n;
}

/// x rounded to the nearest integer, ties to even, as Python's round, numpy.round and tf.math.round.
inline double round_half_even(double x) {
  double r = std::floor(x);
  const double frac = x - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
  return r;
}

/// items split into `segments` positive lengths in order, every split equally likely (T5's _random_segmentation):
/// segments − 1 distinct cut points drawn from 1..items−1 by a partial Fisher–Yates shuffle. 1 <= segments <= items.
inline std::vector<Index> random_segmentation(Index items, Index segments, std::mt19937_64& rng) {
  std::vector<Index> cuts(static_cast<std::size_t>(items - 1));
  for (Index i = 0; i < items - 1; ++i) cuts[std::size_t(i)] = i + 1;
  for (Index i = 0; i < segments - 1; ++i) {
    const Index j = i + static_cast<Index>(uniform_below(rng, static_cast<std::uint64_t>(items - 1 - i)));
    std::swap(cuts[std::size_t(i)], cuts[std::size_t(j)]);
  }
  cuts.resize(static_cast<std::size_t>(segments - 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<Index> lengths(static_cast<std::size_t>(segments));
  Index start = 0;
  for (Index s = 0; s < segments; ++s) {
    const Index end = s + 1 < segments ? cuts[std::size_t(s)] : items;
    lengths[std::size_t(s)] = end - start;
    start = end;
  }
  return lengths;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------------------------
// Knowledge distillation

/// Settings of distillation_loss.
struct DistillationOptions {
  double temperature = 2.0;      ///< T > 0: both distributions are softmax(logits / T)
  double alpha = 0.5;            ///< weight of the soft term in [0, 1]; the hard cross-entropy gets 1 − alpha
  int ignore_index = -100;       ///< rows whose target is this count in neither term
  double label_smoothing = 0.0;  ///< ε of the hard cross-entropy
};

/// The distillation loss of student logits (n, vocab) against teacher logits (n, vocab) and hard targets (n):
///   alpha·T²·(1/m)·Σ_i KL(q_i ‖ p_i) + (1 − alpha)·cross_entropy(student, targets; ignore_index, ε),
/// q_i = softmax(teacher_i / T), p_i = softmax(student_i / T), the sum over the m rows whose target is not
/// ignore_index. The soft term so averages over the same counted rows as the hard one: it is torch's
/// KLDivLoss(reduction='batchmean')(log p, q) over the counted rows (DistilBERT likewise keeps only the masked
/// positions). T² keeps the soft gradient, alpha·T·(p_i − q_i)/m, on the scale of the hard one whatever T (Hinton et
/// al. 2015, §2). With dstudent (n, vocab) non-empty, writes the gradient with respect to the student logits there
/// (it may alias student_logits); ignored rows get 0. No counted row gives loss 0. Throws for mismatched shapes,
/// targets outside 0..vocab−1 (but ignore_index), T <= 0, alpha or ε outside 0..1.
inline double distillation_loss(ConstMatrixView student_logits, ConstMatrixView teacher_logits,
                                std::span<const int> targets, const DistillationOptions& options, MatrixView dstudent) {
  const char* func = "distillation_loss";
  const Index n = student_logits.rows(), vocab = student_logits.cols();
  const double t_ = options.temperature, alpha = options.alpha, eps = options.label_smoothing;
  if (!(t_ > 0.0) || !std::isfinite(t_))
    throw config_error(detail::cat(func, ": temperature is ", t_, ", expected a finite value > 0"));
  if (!(alpha >= 0.0 && alpha <= 1.0)) throw config_error(detail::cat(func, ": alpha is ", alpha, ", expected 0..1"));
  detail::check_label_smoothing(eps, func);
  check_shape(teacher_logits, n, vocab, func, "teacher_logits");
  const bool grad = dstudent.size() != 0;
  if (grad) check_shape(dstudent, n, vocab, func, "dstudent");
  const Index counted = detail::count_targets(targets, n, vocab, options.ignore_index, func);
  const double inv = counted > 0 ? 1.0 / static_cast<double>(counted) : 0.0;
  const double inv_t = 1.0 / t_, soft = alpha * t_ * t_, hard = 1.0 - alpha, keep = 1.0 - eps;
  const double spread = vocab > 0 ? eps / static_cast<double>(vocab) : 0.0;
  double loss = 0.0;
  for (Index i = 0; i < n; ++i) {
    const float* s = student_logits.data() + i * student_logits.outerStride();    // (vocab)
    const float* tch = teacher_logits.data() + i * teacher_logits.outerStride();  // (vocab)
    float* drow = grad ? dstudent.data() + i * dstudent.outerStride() : nullptr;  // (vocab)
    const int t = targets[std::size_t(i)];
    if (t == options.ignore_index) {
      if (grad) std::fill(drow, drow + vocab, 0.0f);
      continue;
    }
    const double log_zs = detail::log_sum_exp(s, vocab, inv_t);    // student at temperature T
    const double log_zt = detail::log_sum_exp(tch, vocab, inv_t);  // teacher at temperature T
    const double log_z1 = detail::log_sum_exp(s, vocab, 1.0);      // student at temperature 1
    double kl = 0.0, sum = 0.0;
    for (Index j = 0; j < vocab; ++j) {
      const double log_q = static_cast<double>(tch[j]) * inv_t - log_zt;
      const double q = std::exp(log_q);
      if (q > 0.0) kl += q * (log_q - (static_cast<double>(s[j]) * inv_t - log_zs));  // 0·log 0 = 0, as torch
      sum += static_cast<double>(s[j]);
    }
    const double ce = keep * (log_z1 - static_cast<double>(s[t])) + eps * (log_z1 - sum / static_cast<double>(vocab));
    loss += soft * kl + hard * ce;
    if (grad) {  // entry j reads only s[j] and tch[j] before writing drow[j], so dstudent may alias the student
      for (Index j = 0; j < vocab; ++j) {
        const double sj = static_cast<double>(s[j]), tj = static_cast<double>(tch[j]);
        const double p = std::exp(sj * inv_t - log_zs), q = std::exp(tj * inv_t - log_zt);
        const double p1 = std::exp(sj - log_z1);
        drow[j] = static_cast<float>((alpha * t_ * (p - q) + hard * (p1 - spread)) * inv);
      }
      drow[t] -= static_cast<float>(hard * keep * inv);
    }
  }
  return loss * inv;
}

// ---------------------------------------------------------------------------------------------------------------
// BERT's masked language modelling

/// Settings of mask_tokens; mask_token_id and vocab_size have no usable default.
struct MaskedLMOptions {
  int mask_token_id = -1;             ///< [MASK] (103 in bert-base-uncased)
  int vocab_size = 0;                 ///< random replacements are drawn from 0..vocab_size−1
  double probability = 0.15;          ///< the chance that each non-special token is chosen
  std::vector<int> special_tokens{};  ///< ids never chosen ([CLS], [SEP], [PAD], ...)
  int ignore_index = -100;            ///< the target of positions not chosen
  double mask_share = 0.8;            ///< of the chosen, the share replaced by mask_token_id
  double random_share = 0.1;          ///< of the chosen, the share replaced by a random id; the rest stay unchanged
};

/// A corrupted sequence and what to predict: targets (n) hold the original id at chosen positions and ignore_index
/// elsewhere, ready for cross_entropy over the model's logits (n, vocab).
struct MaskedLMBatch {
  std::vector<int> inputs;   ///< (n)
  std::vector<int> targets;  ///< (n)
};

/// BERT's masking of tokens (n), one sequence or a batch laid end to end: each token not in special_tokens is chosen
/// independently with the given probability (a Bernoulli draw per token, as Hugging Face's
/// DataCollatorForLanguageModeling, so the chosen count varies around probability·n rather than being fixed as in
/// BERT's original create_pretraining_data.py); a chosen token becomes mask_token_id with chance mask_share (0.8),
/// else a uniform random id in 0..vocab_size−1 (special ids included, as in both) with chance random_share (0.1),
/// else stays. Draws, in token order: one uniform per non-special token, and for a chosen one a second for its fate
/// and, if random, a third for the id. Throws for bad options or a non-special token outside 0..vocab_size−1.
inline MaskedLMBatch mask_tokens(std::span<const int> tokens, const MaskedLMOptions& options, std::mt19937_64& rng) {
  const char* func = "mask_tokens";
  const int vocab = options.vocab_size;
  if (vocab <= 0) throw config_error(detail::cat(func, ": vocab_size is ", vocab, ", expected > 0"));
  if (options.mask_token_id < 0 || options.mask_token_id >= vocab)
    throw config_error(detail::cat(func, ": mask_token_id is ", options.mask_token_id, ", expected 0..", vocab - 1));
  if (!(options.probability >= 0.0 && options.probability <= 1.0))
    throw config_error(detail::cat(func, ": probability is ", options.probability, ", expected 0..1"));
  if (!(options.mask_share >= 0.0 && options.random_share >= 0.0 && options.mask_share + options.random_share <= 1.0))
    throw config_error(detail::cat(func, ": mask_share ", options.mask_share, " and random_share ",
                                   options.random_share, ", expected both >= 0 with a sum <= 1"));
  std::vector<int> special = options.special_tokens;
  std::sort(special.begin(), special.end());
  const auto is_special = [&](int id) { return std::binary_search(special.begin(), special.end(), id); };
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (!is_special(tokens[i]) && (tokens[i] < 0 || tokens[i] >= vocab))
      throw config_error(detail::cat(func, ": token ", i, " is ", tokens[i], ", expected 0..", vocab - 1,
                                     " or one of special_tokens"));
  MaskedLMBatch out{std::vector<int>(tokens.begin(), tokens.end()),
                    std::vector<int>(tokens.size(), options.ignore_index)};
  const double keep_above = options.mask_share + options.random_share;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (is_special(tokens[i]) || !(detail::uniform01(rng) < options.probability)) continue;
    out.targets[i] = tokens[i];
    const double fate = detail::uniform01(rng);
    if (fate < options.mask_share)
      out.inputs[i] = options.mask_token_id;
    else if (fate < keep_above)
      out.inputs[i] = static_cast<int>(detail::uniform_below(rng, static_cast<std::uint64_t>(vocab)));
  }
  return out;
}

/// mask_tokens with a generator seeded by `seed`.
inline MaskedLMBatch mask_tokens(std::span<const int> tokens, const MaskedLMOptions& options, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  return mask_tokens(tokens, options, rng);
}

// ---------------------------------------------------------------------------------------------------------------
// T5's span corruption

/// Settings of corrupt_spans; the defaults are T5's (noise density 0.15, mean span 3, <extra_id_0> = 32099 of a
/// 32100-id vocabulary, counting down).
struct SpanCorruptionOptions {
  double noise_density = 0.15;    ///< the share of tokens dropped, in (0, 1)
  double mean_span_length = 3.0;  ///< the mean length of a dropped span, > 0
  int first_sentinel = 32099;     ///< the id of the first sentinel, <extra_id_0>
  int sentinel_step = -1;         ///< sentinel k is first_sentinel + k·sentinel_step
  int eos_id = -1;                ///< appended to inputs and targets when >= 0 (T5's </s> is 1); −1: none
};

/// A span-corrupted sequence: inputs with each dropped span replaced by its sentinel, and targets listing each
/// sentinel followed by the span it replaced.
struct SpanCorruption {
  std::vector<int> inputs;   ///< (n − noise + spans [+ 1])
  std::vector<int> targets;  ///< (noise + spans [+ 1])
};

/// T5's span corruption of tokens (n >= 2), after t5.data.preprocessors.random_spans_noise_mask: noise =
/// round(n·noise_density) clamped to 1..n−1, spans = max(1, round(noise / mean_span_length)), rounding half to even
/// as Python; noise and n − noise are each split into `spans` positive lengths, every split equally likely, and the
/// sequence alternates kept, dropped, kept, dropped, ... starting with kept tokens (so it always ends on a dropped
/// span). Where noise or n − noise is below that count of spans (T5 would make empty spans) spans is lowered to the
/// smaller of the two. Dropped span k becomes sentinel first_sentinel + k·sentinel_step in inputs; targets are
/// sentinel 0, span 0, sentinel 1, span 1, ...; eos_id, if >= 0, ends both as T5's pipeline appends </s> after the
/// corruption. Throws for fewer than 2 tokens, bad settings, or a sentinel id below 0 or above INT_MAX.
inline SpanCorruption corrupt_spans(std::span<const int> tokens, const SpanCorruptionOptions& options,
                                    std::mt19937_64& rng) {
  const char* func = "corrupt_spans";
  const Index n = static_cast<Index>(tokens.size());
  if (n < 2) throw shape_error(detail::cat(func, ": tokens has ", n, " entries, expected at least 2"));
  if (!(options.noise_density > 0.0 && options.noise_density < 1.0))
    throw config_error(detail::cat(func, ": noise_density is ", options.noise_density, ", expected 0 < it < 1"));
  if (!(options.mean_span_length > 0.0) || !std::isfinite(options.mean_span_length))
    throw config_error(detail::cat(func, ": mean_span_length is ", options.mean_span_length, ", expected > 0"));
  if (options.sentinel_step == 0) throw config_error(detail::cat(func, ": sentinel_step is 0, expected nonzero"));
  const double wanted_noise = detail::round_half_even(static_cast<double>(n) * options.noise_density);
  const Index noise = std::clamp(static_cast<Index>(wanted_noise), Index(1), n - 1), kept = n - noise;
  const double wanted_spans = detail::round_half_even(static_cast<double>(noise) / options.mean_span_length);
  const Index spans =
      std::min({std::max(Index(1), static_cast<Index>(std::min(wanted_spans, static_cast<double>(n)))), noise, kept});
  const long long last_sentinel =
      static_cast<long long>(options.first_sentinel) + static_cast<long long>(spans - 1) * options.sentinel_step;
  if (options.first_sentinel < 0 || last_sentinel < 0 || last_sentinel > INT_MAX)
    throw config_error(detail::cat(func, ": sentinels run from ", options.first_sentinel, " to ", last_sentinel,
                                   " for ", spans, " spans, expected ids in 0..", INT_MAX));
  const std::vector<Index> noise_lengths = detail::random_segmentation(noise, spans, rng);
  const std::vector<Index> kept_lengths = detail::random_segmentation(kept, spans, rng);
  SpanCorruption out;
  const std::size_t eos = options.eos_id >= 0 ? 1 : 0;
  out.inputs.reserve(static_cast<std::size_t>(kept + spans) + eos);
  out.targets.reserve(static_cast<std::size_t>(noise + spans) + eos);
  const int* at = tokens.data();
  for (Index k = 0; k < spans; ++k) {
    const int sentinel = static_cast<int>(options.first_sentinel + k * options.sentinel_step);
    out.inputs.insert(out.inputs.end(), at, at + kept_lengths[std::size_t(k)]);
    at += kept_lengths[std::size_t(k)];
    out.inputs.push_back(sentinel);
    out.targets.push_back(sentinel);
    out.targets.insert(out.targets.end(), at, at + noise_lengths[std::size_t(k)]);
    at += noise_lengths[std::size_t(k)];
  }
  if (eos) {
    out.inputs.push_back(options.eos_id);
    out.targets.push_back(options.eos_id);
  }
  return out;
}

/// corrupt_spans with a generator seeded by `seed`.
inline SpanCorruption corrupt_spans(std::span<const int> tokens, const SpanCorruptionOptions& options,
                                    std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  return corrupt_spans(tokens, options, rng);
}

// ---------------------------------------------------------------------------------------------------------------
// Sequence classification

/// Which row of a sequence's hidden states stands for the whole sequence.
enum class Pooling {
  first,  ///< the first token, BERT's [CLS]
  last,   ///< the last real token, as GPT-2's and Llama's sequence classifiers
  mean    ///< the mean over the real tokens (Sentence-BERT's default)
};

namespace detail {

/// seq = rows / batch after checking the shapes and lengths shared by pool and pool_backward.
inline Index check_pooling(Index rows, Index batch, Index d, Index out_rows, Index out_cols,
                           std::span<const Index> lengths, const char* func, const char* hidden_arg,
                           const char* pooled_arg) {
  if (batch <= 0 || rows % batch != 0)
    throw shape_error(cat(func, ": ", hidden_arg, " has ", rows, " rows, expected batch (", batch, ") · seq"));
  const Index seq = rows / batch;
  if (seq == 0) throw shape_error(cat(func, ": ", hidden_arg, " has 0 rows, expected batch · seq with seq >= 1"));
  if (out_rows != batch || out_cols != d)
    throw shape_error(
        cat(func, ": ", pooled_arg, " has shape ", shape_str(out_rows, out_cols), ", expected ", shape_str(batch, d)));
  if (!lengths.empty()) {
    if (static_cast<Index>(lengths.size()) != batch)
      throw shape_error(cat(func, ": lengths has ", lengths.size(), " entries, expected batch = ", batch));
    for (std::size_t b = 0; b < lengths.size(); ++b)
      if (lengths[b] < 1 || lengths[b] > seq)
        throw config_error(cat(func, ": lengths[", b, "] is ", lengths[b], ", expected 1..", seq));
  }
  return seq;
}

}  // namespace detail

/// Pools hidden (batch·seq, d), the sequences one after another, into out (batch, d): per sequence its first row,
/// its last real row or the mean of its real rows. lengths (batch), when given, counts the real tokens of each
/// right-padded sequence; otherwise all seq rows are real. Throws for shapes that do not fit.
inline void pool(ConstMatrixView hidden, Index batch, Pooling pooling, MatrixView out,
                 std::span<const Index> lengths = {}) {
  const Index d = hidden.cols();
  const Index seq =
      detail::check_pooling(hidden.rows(), batch, d, out.rows(), out.cols(), lengths, "pool", "hidden", "out");
  for (Index b = 0; b < batch; ++b) {
    const Index len = lengths.empty() ? seq : lengths[std::size_t(b)];
    const Index first = b * seq;
    switch (pooling) {
      case Pooling::first:
        out.row(b) = hidden.row(first);
        break;
      case Pooling::last:
        out.row(b) = hidden.row(first + len - 1);
        break;
      case Pooling::mean: {
        Eigen::Matrix<double, 1, Eigen::Dynamic> sum = Eigen::Matrix<double, 1, Eigen::Dynamic>::Zero(d);  // (d)
        for (Index r = first; r < first + len; ++r) sum += hidden.row(r).cast<double>();
        out.row(b) = (sum / static_cast<double>(len)).cast<float>();
        break;
      }
    }
  }
}

/// The backward of pool: writes dhidden (batch·seq, d) from dpooled (batch, d), overwriting it — dpooled_b on the
/// pooled row (first, last), or dpooled_b / length on each real row (mean), 0 elsewhere.
inline void pool_backward(ConstMatrixView dpooled, Index batch, Index seq, Pooling pooling, MatrixView dhidden,
                          std::span<const Index> lengths = {}) {
  const char* func = "pool_backward";
  const Index d = dpooled.cols();
  if (seq <= 0) throw config_error(detail::cat(func, ": seq is ", seq, ", expected >= 1"));
  check_shape(dhidden, batch * seq, d, func, "dhidden");
  detail::check_pooling(dhidden.rows(), batch, d, dpooled.rows(), dpooled.cols(), lengths, func, "dhidden", "dpooled");
  dhidden.setZero();
  for (Index b = 0; b < batch; ++b) {
    const Index len = lengths.empty() ? seq : lengths[std::size_t(b)];
    const Index first = b * seq;
    switch (pooling) {
      case Pooling::first:
        dhidden.row(first) = dpooled.row(b);
        break;
      case Pooling::last:
        dhidden.row(first + len - 1) = dpooled.row(b);
        break;
      case Pooling::mean: {
        const float share = 1.0f / static_cast<float>(len);
        for (Index r = first; r < first + len; ++r) dhidden.row(r) = dpooled.row(b) * share;
        break;
      }
    }
  }
}

/// The loss of a sequence classifier (pool → a (classes, d) linear layer → this): the mean cross-entropy of logits
/// (batch, classes) against labels (batch), which is cross_entropy itself (its errors name cross_entropy); label
/// smoothing and ignore_index work as there. With dlogits (batch, classes) non-empty, writes the gradient there.
inline double classification_loss(ConstMatrixView logits, std::span<const int> labels, MatrixView dlogits,
                                  const CrossEntropyOptions& options = {}) {
  return cross_entropy(logits, labels, dlogits, options);
}

}  // namespace polyformer
