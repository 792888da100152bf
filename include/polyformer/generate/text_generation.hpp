#pragma once
/// \file Text generation with a decoder-only model and a Hugging Face tokenizer, as transformers' `generate` runs a
/// causal LM: the prompt is encoded with the special tokens its tokenizer adds (Llama's <s>; none for GPT-2), run as
/// one batched forward, then one token at a time over the KV cache until `max_new_tokens` tokens are made, an
/// end-of-sequence token is chosen (it ends the text and is not printed), or the model's positions run out. The
/// text is streamed as it grows: every piece passed to `emit` joined is the tokenizer's decoding of the prompt's
/// and the new ids, special tokens left out.

#include <algorithm>
#include <chrono>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/generate/generator.hpp"
#include "polyformer/generate/sampler.hpp"
#include "polyformer/tokenizers/decode_stream.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

namespace polyformer {

/// When text generation stops and what it prints.
struct TextGenerationOptions {
  Index max_new_tokens = 256;        ///< tokens made after the prompt (fewer when the model's positions run out)
  std::vector<int> eos_token_ids;    ///< choosing one of these ends the text (config.json's eos_token_id)
  int bos_token_id = -1;             ///< the start token of an empty prompt (config.json's bos_token_id), or -1
  bool emit_prompt = true;           ///< pass the prompt's text to `emit` first
};

/// Generates from `prompt` over `sequence` (which starts anew) and passes the text to `emit(std::string_view)`
/// piece by piece. Sequence: one decoding sequence of a causal LM (CausalLM::Sequence) with reset(),
/// config().seq_len / vocab_size and forward(tokens, ctx) → the last token's logits. Throws config_error for a
/// prompt that encodes to no token and has no start token, a prompt longer than the model's positions, a
/// tokenizer with more ids than the model has logits, or a chosen token the tokenizer does not have.
template <typename Sequence, typename Emit>
  requires requires(Sequence& s) { s.reset(); }
GenerationStats generate_text(Sequence& sequence, const tokenizers::Tokenizer& tokenizer, std::string_view prompt,
                              const TextGenerationOptions& options, Sampler& sampler, Emit&& emit,
                              const Context& ctx = {}) {
  using clock = std::chrono::steady_clock;
  const char* func = "generate_text";
  const Index vocab = sequence.config().vocab_size, positions = sequence.config().seq_len;
  if (options.max_new_tokens < 0)
    throw config_error(detail::cat(func, ": max_new_tokens is ", options.max_new_tokens, ", expected >= 0"));
  if (static_cast<Index>(tokenizer.vocab_size()) > vocab)
    throw config_error(detail::cat(func, ": the tokenizer has ", tokenizer.vocab_size(), " tokens, the model's logits ",
                                   vocab));
  GenerationStats stats;
  stats.tokens = tokenizer.encode(prompt);
  if (stats.tokens.empty()) {
    if (options.bos_token_id < 0)
      throw config_error(detail::cat(func, ": the prompt encodes to no token and the model names no start token "
                                           "(bos_token_id): give a prompt"));
    stats.tokens.push_back(options.bos_token_id);
  }
  const Index n_prompt = static_cast<Index>(stats.tokens.size());
  if (n_prompt > positions)
    throw config_error(detail::cat(func, ": the prompt is ", n_prompt, " tokens, more than the model's ", positions,
                                   " positions"));
  stats.prompt_tokens = n_prompt;
  tokenizers::DecodeStream stream(tokenizer, /*skip_special_tokens=*/true);
  const auto print = [&](int id) {
    if (const std::string piece = stream.step(id); !piece.empty()) emit(std::string_view(piece));
  };
  for (const int id : stats.tokens) {  // the prompt is the stream's context even when not printed
    const std::string piece = stream.step(id);
    if (options.emit_prompt && !piece.empty()) emit(std::string_view(piece));
  }
  sequence.reset();
  const Index new_tokens = std::min(options.max_new_tokens, positions - n_prompt);
  clock::time_point decode_start{};
  for (Index i = 0; i < new_tokens; ++i) {
    int next = 0;
    if (i == 0) {
      const auto t0 = clock::now();
      next = sampler.sample(sequence.forward(std::span<const int>(stats.tokens), ctx));
      decode_start = clock::now();
      stats.prefill_seconds = std::chrono::duration<double>(decode_start - t0).count();
      stats.prefill_tokens = n_prompt;
    } else {
      const int last = stats.tokens.back();
      next = sampler.sample(sequence.forward(std::span<const int>(&last, 1), ctx));
      ++stats.decoded_tokens;
    }
    if (std::find(options.eos_token_ids.begin(), options.eos_token_ids.end(), next) != options.eos_token_ids.end()) break;
    if (static_cast<std::size_t>(next) >= tokenizer.vocab_size())  // a model's padded vocabulary
      throw config_error(detail::cat(func, ": the model chose token ", next, ", which the tokenizer (", tokenizer.vocab_size(),
                                     " tokens) does not have"));
    stats.tokens.push_back(next);
    print(next);
  }
  if (stats.prefill_tokens > 0) stats.decode_seconds = std::chrono::duration<double>(clock::now() - decode_start).count();
  if (const std::string rest = stream.finish(); !rest.empty()) emit(std::string_view(rest));
  return stats;
}

}  // namespace polyformer
