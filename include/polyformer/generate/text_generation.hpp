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
#include "polyformer/generate/beam_search.hpp"
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

/// Beam search (generate/beam_search.hpp) over a causal LM from a prompt's ids: the prompt runs once, its state is
/// copied to the beams, and every step advances all beams in one batched forward, each beam's state taken from the
/// beam it continues (reorder_beam_states). Returns the best hypothesis. Model: CausalLM-like, with make_state(), a Workspace and
/// forward(state, tokens, ws, ctx) / forward(states, token lists, ws, ctx). Throws config_error when the prompt
/// and max_new_tokens pass the model's positions.
template <typename Model>
BeamSearchResult beam_search_causal(const Model& model, std::span<const int> prompt, const BeamSearchOptions& options,
                                    const Context& ctx = {}) {
  using State = typename Model::State;
  const char* func = "beam_search_causal";
  if (prompt.empty()) throw config_error(detail::cat(func, ": the prompt is empty, expected at least one token"));
  if (static_cast<Index>(prompt.size()) + options.max_new_tokens - 1 > model.config().seq_len)
    throw config_error(detail::cat(func, ": ", prompt.size(), " prompt tokens and ", options.max_new_tokens,
                                   " new ones pass the model's ", model.config().seq_len, " positions"));
  typename Model::Workspace ws;
  std::vector<State> states, moved;
  std::vector<State*> pointers;
  std::vector<std::span<const int>> lists;
  const auto first = [&]() -> std::span<const float> {
    states.assign(1, model.make_state());
    return model.forward(states[0], prompt, ws, ctx);
  };
  const auto next = [&](std::span<const int> sources, std::span<const int> tokens) -> const Matrix& {
    reorder_beam_states(states, sources, moved);
    pointers.clear();
    lists.clear();
    for (std::size_t b = 0; b < states.size(); ++b) {
      pointers.push_back(&states[b]);
      lists.emplace_back(&tokens[b], 1);
    }
    return model.forward(std::span<State* const>(pointers), std::span<const std::span<const int>>(lists), ws, ctx);
  };
  return beam_search(model.config().vocab_size, options, first, next);
}

}  // namespace polyformer
