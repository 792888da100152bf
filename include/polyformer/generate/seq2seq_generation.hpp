#pragma once
/// \file Text generation with an encoder-decoder (T5), as transformers' `generate` runs one: the prompt is encoded
/// with the tokenizer's special tokens (T5's closing </s>) and run through the encoder once; the decoder starts
/// from the model's decoder_start_token_id with each block's cross-attention keys and values projected once, then
/// decodes one token at a time over its cache until `max_new_tokens` tokens, or an end-of-sequence token (not
/// printed). Only the decoder's text is printed: the tokenizer's decoding of the new ids, special tokens left out.
/// Beam search runs the same decoder per beam, each beam's state taken from the beam it continues.
///
/// Model: encode(ids, mask, ctx) → memory (n, d); start(memory, mask, capacity, ctx) → a DecoderState;
/// decode(state, tokens, ctx) → the last token's logits (vocab); config().vocab_size and decoder_start_token_id.

#include <algorithm>
#include <chrono>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/generate/beam_search.hpp"
#include "polyformer/generate/generator.hpp"
#include "polyformer/generate/sampler.hpp"
#include "polyformer/generate/text_generation.hpp"
#include "polyformer/tokenizers/decode_stream.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

namespace polyformer {

/// Generates the decoder's text for `prompt` and passes it to `emit(std::string_view)` piece by piece (options'
/// bos_token_id and emit_prompt do not apply). GenerationStats: the prompt's tokens as prefill (the encoder), the
/// decoder's steps as decoded tokens, `tokens` the new ids. Throws config_error for a prompt that encodes to no
/// token, a tokenizer with more ids than the model has logits, or a chosen token the tokenizer does not have.
template <typename Model, typename Emit>
GenerationStats generate_text_seq2seq(const Model& model, const tokenizers::Tokenizer& tokenizer,
                                      std::string_view prompt, const TextGenerationOptions& options, Sampler& sampler,
                                      Emit&& emit, const Context& ctx = {}) {
  using clock = std::chrono::steady_clock;
  const char* func = "generate_text_seq2seq";
  const Index vocab = model.config().vocab_size;
  if (options.max_new_tokens < 0)
    throw config_error(detail::cat(func, ": max_new_tokens is ", options.max_new_tokens, ", expected >= 0"));
  if (static_cast<Index>(tokenizer.vocab_size()) > vocab)
    throw config_error(detail::cat(func, ": the tokenizer has ", tokenizer.vocab_size(), " tokens, the model's logits ",
                                   vocab));
  const std::vector<int> ids = tokenizer.encode(prompt);
  if (ids.empty()) throw config_error(detail::cat(func, ": the prompt encodes to no token: give a prompt"));
  GenerationStats stats;
  stats.prompt_tokens = stats.prefill_tokens = static_cast<Index>(ids.size());
  const auto t0 = clock::now();
  const Matrix memory = model.encode(ids, {}, ctx);  // (n, d_model)
  auto state = model.start(memory, {}, std::max<Index>(options.max_new_tokens, 1), ctx);
  const auto decode_start = clock::now();
  stats.prefill_seconds = std::chrono::duration<double>(decode_start - t0).count();
  tokenizers::DecodeStream stream(tokenizer, /*skip_special_tokens=*/true);
  int token = model.config().decoder_start_token_id;
  for (Index i = 0; i < options.max_new_tokens; ++i) {
    const int next = sampler.sample(model.decode(state, std::span<const int>(&token, 1), ctx));
    ++stats.decoded_tokens;
    if (std::find(options.eos_token_ids.begin(), options.eos_token_ids.end(), next) != options.eos_token_ids.end()) break;
    if (static_cast<std::size_t>(next) >= tokenizer.vocab_size())  // a model's padded vocabulary
      throw config_error(detail::cat(func, ": the model chose token ", next, ", which the tokenizer (",
                                     tokenizer.vocab_size(), " tokens) does not have"));
    stats.tokens.push_back(next);
    if (const std::string piece = stream.step(next); !piece.empty()) emit(std::string_view(piece));
    token = next;
  }
  stats.decode_seconds = std::chrono::duration<double>(clock::now() - decode_start).count();
  if (const std::string rest = stream.finish(); !rest.empty()) emit(std::string_view(rest));
  return stats;
}

/// Beam search (generate/beam_search.hpp) over an encoder-decoder's decoder from the encoder's output `memory`
/// (n, d_model) and its `mask` (n; or empty): the decoder starts from decoder_start_token_id; every beam is its
/// own decoder state (the cross-attention keys and values projected once, before the first step), reordered each
/// step by reorder_beam_states. Returns the best hypothesis.
template <typename Model>
BeamSearchResult beam_search_seq2seq(const Model& model, const Matrix& memory, std::span<const int> mask,
                                     const BeamSearchOptions& options, const Context& ctx = {}) {
  using State = typename Model::DecoderState;
  std::vector<State> states, scratch;
  Matrix rows;  // (beams, vocab)
  const auto first = [&]() -> std::span<const float> {
    states.assign(1, model.start(memory, mask, std::max<Index>(options.max_new_tokens, 1), ctx));
    const int start = model.config().decoder_start_token_id;
    return model.decode(states[0], std::span<const int>(&start, 1), ctx);
  };
  const auto next = [&](std::span<const int> sources, std::span<const int> tokens) -> const Matrix& {
    reorder_beam_states(states, sources, scratch);
    rows.resize(static_cast<Index>(states.size()), model.config().vocab_size);
    for (std::size_t b = 0; b < states.size(); ++b) {
      const std::span<const float> logits = model.decode(states[b], tokens.subspan(b, 1), ctx);
      std::copy(logits.begin(), logits.end(), rows.data() + static_cast<Index>(b) * rows.cols());
    }
    return rows;
  };
  return beam_search(model.config().vocab_size, options, first, next);
}

}  // namespace polyformer
