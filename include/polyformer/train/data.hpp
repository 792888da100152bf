#pragma once
/// \file Training data for next-token prediction: a corpus of token ids (a text encoded with a tokenizer, or a
/// llama2.c pretokenized shard of uint16 ids) cut into windows. Window k is tokens [k·N, k·N + N]: N inputs and,
/// shifted by one, their N targets. Batches take windows in file order, wrapping around, or in a seeded
/// permutation drawn anew for every pass over the corpus (epoch); either way a batch depends only on its position
/// in the stream of windows, so a resumed run reads exactly what an uninterrupted one would.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/file.hpp"
#include "polyformer/io/tokenizer.hpp"

namespace polyformer {

/// A small, portable generator (SplitMix64, Steele et al. 2014): the same numbers on every platform and standard
/// library, which std::uniform_*_distribution does not promise. Its whole state is one integer.
struct SplitMix64 {
  std::uint64_t state = 0;

  std::uint64_t next() noexcept {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n) for n >= 1 (Lemire's multiply-shift; the bias is below 2^-32 for any n < 2^32).
  std::uint64_t below(std::uint64_t n) noexcept {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

/// The token ids of a llama2.c pretokenized shard (little-endian uint16, as its pretokenize step writes them);
/// throws format_error for an odd size or an empty file, and config_error naming the position of an id that is not
/// below vocab_size.
inline std::vector<int> read_token_shard(const std::string& path, Index vocab_size) {
  const char* func = "read_token_shard";
  const io::detail::ByteBuffer bytes = io::detail::map_file(path, "token shard");
  if (bytes.size() == 0 || bytes.size() % 2 != 0)
    throw format_error(detail::cat(func, ": '", path, "' has ", bytes.size(),
                                   " bytes, expected a positive even number (uint16 token ids)"));
  std::vector<int> tokens(bytes.size() / 2);
  const unsigned char* p = bytes.data();
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const int id = static_cast<int>(p[2 * i]) | (static_cast<int>(p[2 * i + 1]) << 8);
    if (id >= vocab_size)
      throw config_error(detail::cat(func, ": '", path, "' token ", i, " is ", id, ", expected 0..", vocab_size - 1,
                                     " (the model's vocabulary)"));
    tokens[i] = id;
  }
  return tokens;
}

/// A text file encoded as generate encodes a prompt: the whole text as one sequence, BOS first.
inline std::vector<int> read_text_tokens(const std::string& path, const io::Tokenizer& tokenizer) {
  const io::detail::ByteBuffer bytes = io::detail::map_file(path, "text");
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return tokenizer.encode(text, /*bos=*/true);
}

/// A corpus cut into windows of seq_len + 1 tokens, consecutive windows sharing one token. Batches are read by
/// position in the stream of windows: position p is window p mod count() in file order, or, with a shuffle seed,
/// entry p mod count() of epoch p / count()'s permutation.
class TokenWindows {
 public:
  /// Throws config_error unless the corpus holds at least one window of seq_len + 1 tokens.
  TokenWindows(std::vector<int> tokens, Index seq_len, std::optional<std::uint64_t> shuffle_seed = std::nullopt,
               std::string label = "data")
      : tokens_(std::move(tokens)), seq_len_(seq_len), seed_(shuffle_seed), label_(std::move(label)) {
    const char* func = "TokenWindows";
    if (seq_len_ < 1) throw config_error(detail::cat(func, ": seq_len is ", seq_len_, ", expected >= 1"));
    if (static_cast<Index>(tokens_.size()) < seq_len_ + 1)
      throw config_error(detail::cat(func, ": ", label_, " has ", tokens_.size(), " tokens, expected at least seq_len + 1 = ",
                                     seq_len_ + 1, " for one window"));
    count_ = (static_cast<Index>(tokens_.size()) - 1) / seq_len_;
  }

  Index count() const noexcept { return count_; }
  Index seq_len() const noexcept { return seq_len_; }
  std::size_t token_count() const noexcept { return tokens_.size(); }
  const std::optional<std::uint64_t>& shuffle_seed() const noexcept { return seed_; }
  const std::string& label() const noexcept { return label_; }

  /// The window read at stream position p >= 0.
  Index window_at(Index p) {
    if (!seed_) return p % count_;
    const Index epoch = p / count_;
    if (epoch != epoch_) shuffle(epoch);
    return order_[static_cast<std::size_t>(p % count_)];
  }

  /// The windows at positions first … first + batch − 1: inputs and targets (batch·seq_len each), sequence after
  /// sequence.
  void batch(Index first, Index batch, std::vector<int>& inputs, std::vector<int>& targets) {
    if (first < 0 || batch < 1)
      throw config_error(detail::cat("TokenWindows::batch: first ", first, ", batch ", batch,
                                     ", expected first >= 0 and batch >= 1"));
    const std::size_t n = static_cast<std::size_t>(seq_len_);
    inputs.resize(static_cast<std::size_t>(batch) * n);
    targets.resize(inputs.size());
    for (Index b = 0; b < batch; ++b) {
      const int* w = tokens_.data() + window_at(first + b) * seq_len_;
      std::copy_n(w, n, inputs.begin() + static_cast<std::ptrdiff_t>(b) * seq_len_);
      std::copy_n(w + 1, n, targets.begin() + static_cast<std::ptrdiff_t>(b) * seq_len_);
    }
  }

 private:
  /// epoch's permutation of the windows (Fisher–Yates over SplitMix64 seeded by the seed and the epoch).
  void shuffle(Index epoch) {
    order_.resize(static_cast<std::size_t>(count_));
    for (Index i = 0; i < count_; ++i) order_[static_cast<std::size_t>(i)] = i;
    SplitMix64 rng{*seed_ ^ (0xD1B54A32D192ED03ull * static_cast<std::uint64_t>(epoch + 1))};
    for (std::size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
    epoch_ = epoch;
  }

  std::vector<int> tokens_;
  Index seq_len_ = 0, count_ = 0;
  std::optional<std::uint64_t> seed_;
  std::string label_;
  std::vector<Index> order_;  // the current epoch's permutation (with a seed)
  Index epoch_ = -1;
};

}  // namespace polyformer
