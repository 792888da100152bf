#pragma once
/// \file Text generation with a decoder-only model: the prompt is prefilled as one batched forward, then one
/// token is decoded at a time over the KV cache. The loop reproduces llama2.c's run.c `generate`: `steps`
/// counts positions, prompt included; the prompt's pieces are printed too; generation stops early when the
/// model produces BOS; every piece is printed as run.c's safe_printf would, then one final newline.

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
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
/// seq_len) and passes each printable piece to `emit(std::string_view)`, over `sequence`, which starts anew.
/// Sequence: one decoding sequence of a decoder-only model (Llama::Sequence) with reset(), config().seq_len /
/// vocab_size and forward(tokens, ctx) → logits.
template <typename Sequence, typename Emit>
  requires requires(Sequence& s) { s.reset(); }
GenerationStats generate(Sequence& model, const io::Tokenizer& tokenizer, std::string_view prompt, Index steps,
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

/// The same over a new sequence of `model` (a const model: any number of threads may generate from it at once).
template <typename Model, typename Emit>
  requires requires(const Model& m) { m.new_sequence(); }
GenerationStats generate(const Model& model, const io::Tokenizer& tokenizer, std::string_view prompt, Index steps,
                         Sampler& sampler, Emit&& emit, const Context& ctx = {}) {
  auto sequence = model.new_sequence();
  return generate(sequence, tokenizer, prompt, steps, sampler, std::forward<Emit>(emit), ctx);
}

/// Generates for every prompt exactly what generate() would for it alone (same sampler options, a sampler of
/// its own per prompt), with up to `max_batch` sequences advanced by each batched forward of `model` (each
/// weight read once per step for all of them); when a sequence ends, the next prompt takes its place.
/// emit(prompt_index, piece) receives each sequence's pieces in its own order (sequences interleave). Model:
/// Llama-like, with make_state(), a Workspace and forward(states, token lists, workspace, ctx) → logits rows.
template <typename Model, typename Emit>
std::vector<GenerationStats> generate_batch(const Model& model, const io::Tokenizer& tokenizer,
                                            std::span<const std::string> prompts, Index steps,
                                            const SamplerOptions& sampling, Index max_batch, Emit&& emit,
                                            const Context& ctx = {}) {
  using State = typename Model::State;
  const char* func = "generate_batch";
  if (steps < 0) throw config_error(detail::cat(func, ": steps is ", steps, ", expected >= 0"));
  if (max_batch < 1) throw config_error(detail::cat(func, ": max_batch is ", max_batch, ", expected >= 1"));
  const Index vocab = model.config().vocab_size;
  if (tokenizer.vocab_size() != vocab)
    throw config_error(detail::cat(func, ": the tokenizer has ", tokenizer.vocab_size(), " tokens, the model's vocabulary ",
                                   vocab));
  if (steps == 0 || steps > model.config().seq_len) steps = model.config().seq_len;

  struct Slot {  // one sequence in flight
    std::size_t prompt = 0;
    Index pos = 0, n_prompt = 0;
    int token = 0;
    bool active = false;
    State state;
    std::optional<Sampler> sampler;
  };
  std::vector<GenerationStats> stats(prompts.size());
  std::vector<Slot> slots(static_cast<std::size_t>(std::min<Index>(max_batch, std::max<std::size_t>(prompts.size(), 1))));
  for (Slot& s : slots) s.state = model.make_state();
  typename Model::Workspace ws;
  std::vector<State*> batch_states;
  std::vector<std::span<const int>> batch_tokens;
  std::vector<Slot*> batch_slots;
  std::size_t next_prompt = 0;

  // Finishes a sequence's step with `next`: stops at BOS or after the last position, else prints and moves on.
  const auto advance = [&](Slot& s, int next) {
    GenerationStats& st = stats[s.prompt];
    if (next == io::Tokenizer::bos_id) {
      s.active = false;
      return;
    }
    if (s.pos >= s.n_prompt - 1) st.tokens.push_back(next);
    emit(s.prompt, io::Tokenizer::printable(tokenizer.decode(s.token, next)));
    s.token = next;
    if (++s.pos >= steps) s.active = false;
  };
  for (;;) {
    // Fill free slots; walk every sequence through its forced prompt positions up to its next forward.
    batch_states.clear();
    batch_tokens.clear();
    batch_slots.clear();
    for (Slot& s : slots) {
      for (;;) {
        if (!s.active) {
          if (s.sampler) emit(s.prompt, std::string_view("\n"));  // a finished sequence's final newline
          s.sampler.reset();
          if (next_prompt == prompts.size()) break;
          s.prompt = next_prompt++;
          GenerationStats& st = stats[s.prompt];
          st.tokens = tokenizer.encode(prompts[s.prompt], /*bos=*/true, /*eos=*/false);
          s.n_prompt = st.prompt_tokens = static_cast<Index>(st.tokens.size());
          s.pos = 0;
          s.token = st.tokens.front();
          s.state.clear();
          s.sampler.emplace(static_cast<int>(vocab), sampling);
          s.active = steps > 0;
          continue;
        }
        if (s.pos < s.n_prompt - 1) {  // inside the prompt: forced, no forward
          advance(s, stats[s.prompt].tokens[std::size_t(s.pos + 1)]);
          continue;
        }
        GenerationStats& st = stats[s.prompt];
        batch_states.push_back(&s.state);
        if (s.pos == s.n_prompt - 1) {
          batch_tokens.emplace_back(st.tokens.data(), std::size_t(s.n_prompt));
          st.prefill_tokens = s.n_prompt;
        } else {
          batch_tokens.emplace_back(&s.token, 1);
          ++st.decoded_tokens;
        }
        batch_slots.push_back(&s);
        break;
      }
    }
    if (batch_slots.empty()) break;
    const Matrix& logits = model.forward(std::span<State* const>(batch_states),
                                         std::span<const std::span<const int>>(batch_tokens), ws, ctx);
    for (std::size_t i = 0; i < batch_slots.size(); ++i) {
      Slot& s = *batch_slots[i];
      advance(s, s.sampler->sample(std::span<const float>(logits.data() + Index(i) * vocab, std::size_t(vocab))));
    }
  }
  return stats;
}

}  // namespace polyformer
