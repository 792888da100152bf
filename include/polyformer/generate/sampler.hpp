#pragma once
/// \file Choosing the next token from logits: greedy (argmax), or sampling at a temperature from the whole
/// distribution, its k most likely tokens (top-k, Fan et al. 2018) and/or its nucleus (top-p, Holtzman et al.
/// 2020). Seeded and reproducible: the random stream is xorshift64* (Marsaglia 2003; Vigna 2016), the
/// generator llama2.c's run.c uses, drawn once per sampled token, and without top-k the choice follows
/// run.c's steps (temperature, softmax, nucleus over the probabilities above (1 − p)/(n − 1), stably sorted).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/kernels/softmax.hpp"

namespace polyformer {

/// How the next token is chosen.
struct SamplerOptions {
  float temperature = 1.0f;  ///< 0: greedy argmax; otherwise logits are divided by it before the softmax
  float top_p = 0.9f;        ///< nucleus mass in (0, 1); 0 or >= 1 turns the nucleus off
  int top_k = 0;             ///< keep only the k most likely tokens; 0 turns it off
  std::uint64_t seed = 1;    ///< random stream seed (nonzero)

  /// Throws config_error naming `func` unless the options are usable.
  void validate(const char* func) const {
    if (!(temperature >= 0.0f) || !std::isfinite(temperature))
      throw config_error(detail::cat(func, ": temperature is ", temperature, ", expected a finite value >= 0"));
    if (!(top_p >= 0.0f && top_p <= 1.0f))
      throw config_error(detail::cat(func, ": top_p is ", top_p, ", expected 0..1"));
    if (top_k < 0) throw config_error(detail::cat(func, ": top_k is ", top_k, ", expected >= 0"));
    if (seed == 0) throw config_error(detail::cat(func, ": seed is 0, expected nonzero (xorshift stays at 0)"));
  }
};

/// Picks tokens from logits. Owns its scratch (sized once for the vocabulary).
class Sampler {
 public:
  Sampler(int vocab_size, SamplerOptions options) : options_(options), state_(options.seed) {
    options_.validate("Sampler");
    if (vocab_size < 1) throw config_error(detail::cat("Sampler: vocab_size is ", vocab_size, ", expected >= 1"));
    order_.resize(static_cast<std::size_t>(vocab_size));
    probs_.resize(static_cast<std::size_t>(vocab_size));
  }

  const SamplerOptions& options() const noexcept { return options_; }

  /// The next token for `logits` (vocab). Throws shape_error for a different vocabulary size.
  int sample(std::span<const float> logits) {
    const std::size_t n = probs_.size();
    if (logits.size() != n)
      throw shape_error(detail::cat("Sampler::sample: logits has shape (", logits.size(), "), expected (", n, ")"));
    if (options_.temperature == 0.0f) return argmax(logits);
    for (std::size_t i = 0; i < n; ++i) probs_[i] = logits[i] / options_.temperature;
    kernels::softmax(probs_.data(), n);
    const float coin = next_float();
    const bool nucleus = options_.top_p > 0.0f && options_.top_p < 1.0f;
    const bool top_k = options_.top_k > 0 && static_cast<std::size_t>(options_.top_k) < n;
    if (!nucleus && !top_k) return sample_all(coin);
    return sample_sorted(coin, nucleus, top_k);
  }

  /// The first index of the largest logit.
  static int argmax(std::span<const float> logits) noexcept {
    std::size_t best = 0;
    for (std::size_t i = 1; i < logits.size(); ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int>(best);
  }

  /// The next value of the random stream, uniform in [0, 1) with 24 bits.
  float next_float() noexcept { return static_cast<float>(next_u32() >> 8) / 16777216.0f; }

 private:
  std::uint32_t next_u32() noexcept {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return static_cast<std::uint32_t>((state_ * 0x2545F4914F6CDD1Dull) >> 32);
  }

  /// Inverse-CDF draw over every token.
  int sample_all(float coin) const noexcept {
    float cdf = 0.0f;
    for (std::size_t i = 0; i < probs_.size(); ++i) {
      cdf += probs_[i];
      if (coin < cdf) return static_cast<int>(i);
    }
    return static_cast<int>(probs_.size() - 1);  // rounding left the total just under the coin
  }

  /// Draw among the most likely tokens: the top k and/or the smallest prefix whose mass passes top_p.
  int sample_sorted(float coin, bool nucleus, bool top_k) {
    const std::size_t n = probs_.size();
    std::size_t kept = 0;
    // Without top-k, tokens below (1 − p)/(n − 1) cannot be in the nucleus: leave them out before sorting.
    const float cutoff = (nucleus && !top_k && n > 1) ? (1.0f - options_.top_p) / static_cast<float>(n - 1) : 0.0f;
    for (std::size_t i = 0; i < n; ++i)
      if (probs_[i] >= cutoff) order_[kept++] = static_cast<int>(i);
    if (kept == 0) return argmax(probs_);  // a nucleus below one uniform share: the cutoff left nothing
    const auto by_prob = [&](int a, int b) { return probs_[std::size_t(a)] > probs_[std::size_t(b)]; };
    if (top_k) {
      const std::size_t k = std::min<std::size_t>(kept, static_cast<std::size_t>(options_.top_k));
      // Ties keep index order, as the stable sort below does.
      std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(k),
                        order_.begin() + static_cast<std::ptrdiff_t>(kept),
                        [&](int a, int b) { return by_prob(a, b) || (!by_prob(b, a) && a < b); });
      kept = k;
    } else {
      std::stable_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(kept), by_prob);
    }
    std::size_t last = kept - 1;
    float mass = 0.0f;
    for (std::size_t i = 0; i < kept; ++i) {
      mass += probs_[std::size_t(order_[i])];
      if (nucleus && mass > options_.top_p) {
        last = i;
        break;
      }
    }
    const float r = coin * mass;
    float cdf = 0.0f;
    for (std::size_t i = 0; i <= last; ++i) {
      cdf += probs_[std::size_t(order_[i])];
      if (r < cdf) return order_[i];
    }
    return order_[last];
  }

  SamplerOptions options_;
  std::uint64_t state_;
  std::vector<int> order_;    // token ids, most likely first
  std::vector<float> probs_;  // (vocab)
};

}  // namespace polyformer
