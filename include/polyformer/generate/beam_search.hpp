#pragma once
/// \file Beam search as transformers' generate runs it (num_beams > 1 without sampling: its BeamSearchScorer and
/// BeamHypotheses). K beams start from the prompt; each step adds every beam's log-softmax to its score and takes
/// the 2·K best (beam, token) pairs in order: one ending in an end-of-sequence token among the first K becomes a
/// finished hypothesis (without that token, scored by its summed log-probability ÷ generated_len^length_penalty,
/// generated_len counting the end token), the others fill the K beams of the next step. The search ends when K
/// hypotheses are finished and — early_stopping — at once (yes), when the best running score can no longer beat
/// the worst hypothesis at the current length (heuristic, transformers' False) or at the maximum length (never);
/// or after max_new_tokens, when the running beams join the hypotheses. The model side is two callables, so one
/// search serves decoder-only models and encoder-decoders alike.

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// How a beam search runs and when it stops.
struct BeamSearchOptions {
  /// transformers' early_stopping: True (yes), False (heuristic) and "never".
  enum class EarlyStopping { yes, heuristic, never };

  int num_beams = 4;
  Index max_new_tokens = 20;
  double length_penalty = 1.0;  ///< hypotheses are scored by sum of log-probabilities ÷ length^length_penalty
  EarlyStopping early_stopping = EarlyStopping::heuristic;
  std::vector<int> eos_token_ids;  ///< choosing one finishes a hypothesis; the first is appended to the result

  /// Throws config_error naming `func` unless the options are usable.
  void validate(const char* func) const {
    if (num_beams < 1) throw config_error(detail::cat(func, ": num_beams is ", num_beams, ", expected >= 1"));
    if (max_new_tokens < 0) throw config_error(detail::cat(func, ": max_new_tokens is ", max_new_tokens, ", expected >= 0"));
    if (!std::isfinite(length_penalty))
      throw config_error(detail::cat(func, ": length_penalty is ", length_penalty, ", expected a finite number"));
  }
};

/// Makes `states` the next step's beams: beam i becomes a copy of the old beam sources[i]. A source's last use
/// takes it by move, so a state is copied only when several beams continue it; `scratch` is left holding the old
/// states' husks, so its storage serves the next step. Throws config_error for a source outside `states`.
template <typename State>
void reorder_beam_states(std::vector<State>& states, std::span<const int> sources, std::vector<State>& scratch) {
  std::vector<std::size_t> uses(states.size(), 0);
  for (const int s : sources) {
    if (s < 0 || static_cast<std::size_t>(s) >= states.size())
      throw config_error(detail::cat("reorder_beam_states: source ", s, ", expected 0..", states.size() - 1));
    ++uses[std::size_t(s)];
  }
  scratch.clear();
  for (const int s : sources) {
    State& from = states[std::size_t(s)];
    if (--uses[std::size_t(s)] == 0) scratch.push_back(std::move(from));
    else scratch.push_back(from);
  }
  states.swap(scratch);
}

/// The best hypothesis: its new tokens (with the end token it finished with, if any) and its score.
struct BeamSearchResult {
  std::vector<int> tokens;
  double score = 0;
};

/// Runs beam search over a model given as two callables:
///   first() → the prompt's next-token logits (a span of vocab floats), after which one beam holds the prompt;
///   next(sources, tokens) → a matrix (K, vocab) of logits: beam i continues beam sources[i] of the previous step
///     with tokens[i] (the model copies or reorders its per-beam state accordingly).
/// Lengths count new tokens only (transformers' generated_len: from the prompt of a decoder-only model, from the
/// start token of an encoder-decoder's decoder).
template <typename First, typename Next>
BeamSearchResult beam_search(Index vocab, const BeamSearchOptions& options, First&& first, Next&& next) {
  const char* func = "beam_search";
  options.validate(func);
  if (vocab < 1) throw config_error(detail::cat(func, ": vocab is ", vocab, ", expected >= 1"));
  if (options.max_new_tokens == 0) return {};
  const std::size_t k = static_cast<std::size_t>(options.num_beams);
  const Index max_new = options.max_new_tokens;
  struct Hypothesis {
    double score;
    std::vector<int> tokens;  // new tokens, without the end token
  };
  std::vector<Hypothesis> hypotheses;
  double worst = std::numeric_limits<double>::infinity();
  const auto add = [&](std::vector<int> tokens, double sum_logprobs, Index generated) {
    const double score = sum_logprobs / std::pow(double(generated), options.length_penalty);
    if (hypotheses.size() < k || score > worst) {
      hypotheses.push_back({score, std::move(tokens)});
      if (hypotheses.size() > k) {
        hypotheses.erase(std::min_element(hypotheses.begin(), hypotheses.end(),
                                          [](const Hypothesis& a, const Hypothesis& b) { return a.score < b.score; }));
        worst = std::min_element(hypotheses.begin(), hypotheses.end(), [](const Hypothesis& a, const Hypothesis& b) {
                  return a.score < b.score;
                })->score;
      } else {
        worst = std::min(worst, score);
      }
    }
  };
  const auto done_at = [&](double best_sum_logprobs, Index generated) {
    if (hypotheses.size() < k) return false;
    switch (options.early_stopping) {
      case BeamSearchOptions::EarlyStopping::yes: return true;
      case BeamSearchOptions::EarlyStopping::heuristic:
        return worst >= best_sum_logprobs / std::pow(double(generated), options.length_penalty);
      case BeamSearchOptions::EarlyStopping::never:
        return worst >= best_sum_logprobs /
                            std::pow(double(options.length_penalty > 0 ? max_new : generated), options.length_penalty);
    }
    return false;
  };
  const auto is_eos = [&](int token) {
    return std::find(options.eos_token_ids.begin(), options.eos_token_ids.end(), token) != options.eos_token_ids.end();
  };

  // Beam i's new tokens and score; before the first step one beam is live, the others score −1e9 (transformers).
  std::vector<std::vector<int>> beams(k), next_beams;
  std::vector<double> scores(k, -1e9), next_scores;
  scores[0] = 0;
  std::vector<int> sources, tokens;
  std::vector<double> logprobs(static_cast<std::size_t>(vocab) * k);
  std::vector<std::pair<double, std::size_t>> candidates;  // (score, beam · vocab + token)
  bool done = false;
  const auto log_softmax = [&](const float* logits, double* out) {
    const float top = *std::max_element(logits, logits + vocab);
    double sum = 0;
    for (Index v = 0; v < vocab; ++v) sum += std::exp(double(logits[v]) - top);
    const double log_sum = std::log(sum) + top;
    for (Index v = 0; v < vocab; ++v) out[v] = double(logits[v]) - log_sum;
  };
  for (Index step = 0; step < max_new; ++step) {
    if (step == 0) {
      const std::span<const float> logits = first();
      if (static_cast<Index>(logits.size()) != vocab)
        throw shape_error(detail::cat(func, ": the first logits have ", logits.size(), " entries, expected ", vocab));
      for (std::size_t b = 0; b < k; ++b) log_softmax(logits.data(), logprobs.data() + b * std::size_t(vocab));
    } else {
      const Matrix& logits = next(std::span<const int>(sources), std::span<const int>(tokens));
      if (logits.rows() != Index(k) || logits.cols() != vocab)
        throw shape_error(detail::cat(func, ": next() gave logits (", logits.rows(), ", ", logits.cols(), "), expected (",
                                      k, ", ", vocab, ")"));
      for (std::size_t b = 0; b < k; ++b) log_softmax(logits.data() + b * std::size_t(vocab), logprobs.data() + b * std::size_t(vocab));
    }
    // The 2·K best of every beam's score + log-probability, best first (ties: the lower index, as a stable top-k).
    candidates.clear();
    for (std::size_t b = 0; b < k; ++b)
      for (Index v = 0; v < vocab; ++v)
        candidates.emplace_back(scores[b] + logprobs[b * std::size_t(vocab) + std::size_t(v)], b * std::size_t(vocab) + std::size_t(v));
    const std::size_t keep = std::min(candidates.size(), 2 * k);
    std::partial_sort(candidates.begin(), candidates.begin() + std::ptrdiff_t(keep), candidates.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    next_beams.clear();
    next_scores.clear();
    sources.clear();
    tokens.clear();
    const Index generated = step + 1;  // counting this step's token
    for (std::size_t rank = 0; rank < keep && next_beams.size() < k; ++rank) {
      const auto [score, flat] = candidates[rank];
      const std::size_t beam = flat / std::size_t(vocab);
      const int token = static_cast<int>(flat % std::size_t(vocab));
      if (is_eos(token)) {
        if (rank < k) add(beams[beam], score, generated);
        continue;
      }
      next_beams.push_back(beams[beam]);
      next_beams.back().push_back(token);
      next_scores.push_back(score);
      sources.push_back(static_cast<int>(beam));
      tokens.push_back(token);
    }
    if (next_beams.size() < k)
      throw config_error(detail::cat(func, ": fewer than ", k, " continuations that are not end tokens (vocabulary ", vocab,
                                     ")"));
    done = done || done_at(candidates[0].first, generated);
    beams.swap(next_beams);
    scores.swap(next_scores);
    if (done) break;
  }
  if (!done)
    for (std::size_t b = 0; b < k; ++b) add(beams[b], scores[b], static_cast<Index>(beams[b].size()));
  const auto best = std::max_element(hypotheses.begin(), hypotheses.end(),
                                     [](const Hypothesis& a, const Hypothesis& b) { return a.score < b.score; });
  BeamSearchResult result{best->tokens, best->score};
  if (static_cast<Index>(result.tokens.size()) < max_new && !options.eos_token_ids.empty())
    result.tokens.push_back(options.eos_token_ids.front());
  return result;
}

}  // namespace polyformer
