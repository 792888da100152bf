#pragma once
/// \file Text generation with a decoder-only model: the prompt is prefilled as one batched forward, then one
/// token is decoded at a time over the KV cache. The loop reproduces llama2.c's run.c `generate`: `steps`
/// counts positions, prompt included; the prompt's pieces are printed too; generation stops early when the
/// model produces BOS; every piece is printed as run.c's safe_printf would, then one final newline.

#include <chrono>
#include <span>
#include <string_view>
#include <vector>

#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/generate/sampler.hpp"
#include "polyformer/io/tokenizer.hpp"

namespace polyformer {

/// What one generate() call did, and how fast.
struct GenerationStats {
  Index prompt_tokens = 0;     ///< BOS included
  Index prefill_tokens = 0;    ///< positions run in the batched prefill
  Index decoded_tokens = 0;    ///< positions run one at a time afterwards
  double prefill_seconds = 0;  ///< wall time of the prefill forward
  double decode_seconds = 0;   ///< wall time of the decoding loop (forwards and sampling)
  std::vector<int> tokens;     ///< every token of the sequence: the prompt's, then the generated ones

  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? double(prefill_tokens) / prefill_seconds : 0; }
  double decode_tokens_per_second() const { return decode_seconds > 0 ? double(decoded_tokens) / decode_seconds : 0; }
};

/// Generates from `prompt` for `steps` positions (prompt included; 0 or more than the model's seq_len means
/// seq_len) and passes each printable piece to `emit(std::string_view)`. The model starts a new sequence.
/// Model: a decoder-only model with reset(), config().seq_len / vocab_size and forward(tokens, ctx) → logits.
template <typename Model, typename Emit>
GenerationStats generate(Model& model, const io::Tokenizer& tokenizer, std::string_view prompt, Index steps,
                         Sampler& sampler, Emit&& emit, const Context& ctx = {}) {
  using clock = std::chrono::steady_clock;
  if (steps < 0) throw config_error(detail::cat("generate: steps is ", steps, ", expected >= 0"));
  if (tokenizer.vocab_size() != model.config().vocab_size)
    throw config_error(detail::cat("generate: the tokenizer has ", tokenizer.vocab_size(),
                                   " tokens, the model's vocabulary ", model.config().vocab_size));
  if (steps == 0 || steps > model.config().seq_len) steps = model.config().seq_len;
  GenerationStats stats;
  stats.tokens = tokenizer.encode(prompt, /*bos=*/true, /*eos=*/false);
  const std::vector<int>& prompt_tokens = stats.tokens;
  const Index n_prompt = static_cast<Index>(prompt_tokens.size());
  stats.prompt_tokens = n_prompt;
  stats.tokens.reserve(static_cast<std::size_t>(std::max(steps, n_prompt)) + 1);
  model.reset();
  int token = prompt_tokens.front();
  clock::time_point decode_start{};
  for (Index pos = 0; pos < steps; ++pos) {
    int next = 0;
    if (pos < n_prompt - 1) {
      next = prompt_tokens[std::size_t(pos + 1)];  // still inside the prompt: forced
    } else if (pos == n_prompt - 1) {
      const auto t0 = clock::now();
      const auto logits = model.forward(std::span<const int>(prompt_tokens.data(), std::size_t(n_prompt)), ctx);
      next = sampler.sample(logits);
      decode_start = clock::now();
      stats.prefill_seconds = std::chrono::duration<double>(decode_start - t0).count();
      stats.prefill_tokens = n_prompt;
    } else {
      next = sampler.sample(model.forward(std::span<const int>(&token, 1), ctx));
      ++stats.decoded_tokens;
    }
    if (next == io::Tokenizer::bos_id) break;
    if (pos >= n_prompt - 1) stats.tokens.push_back(next);
    emit(io::Tokenizer::printable(tokenizer.decode(token, next)));
    token = next;
  }
  if (stats.prefill_tokens > 0) stats.decode_seconds = std::chrono::duration<double>(clock::now() - decode_start).count();
  emit(std::string_view("\n"));
  return stats;
}

}  // namespace polyformer
