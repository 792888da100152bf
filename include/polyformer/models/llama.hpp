#pragma once
/// \file Llama-2-architecture decoder-only model (Touvron et al. 2023) composed from polyformer's policies:
/// token embedding → layers of pre-norm RMSNorm, grouped-query self-attention with interleaved RoPE and SwiGLU
/// FFN (EncoderLayer run causally over a KV cache) → final RMSNorm → classifier. Loads llama2.c checkpoints.

#include <concepts>
#include <span>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/layers/rotary.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// A decoder-only Llama model over attention policy `Attn` and linear policy `Lin`. It owns one KV cache per
/// layer, sized for config.seq_len positions when built, so generating allocates nothing per token.
/// One sequence at a time; forward() appends positions, reset() starts a new sequence.
template <IncrementalAttention Attn = FullAttention, LinearPolicy Lin = Dense>
class Llama {
 public:
  using Layer = EncoderLayer<Attn, Lin, RMSNorm, SwiGLU, NormPlacement::pre, RoPE<RotaryStyle::interleaved>>;

  Llama() = default;

  /// embedding (vocab, dim); layers; final norm; classifier dim → vocab.
  Llama(io::LlamaConfig config, Matrix embedding, std::vector<Layer> layers, RMSNorm final_norm, Lin classifier)
      : config_(config), embedding_(std::move(embedding)), layers_(std::move(layers)),
        final_norm_(std::move(final_norm)), classifier_(std::move(classifier)) {
    config_.validate("Llama");
    check_shape(embedding_, config_.vocab_size, config_.dim, "Llama", "embedding");
    if (static_cast<Index>(layers_.size()) != config_.n_layers)
      throw config_error(detail::cat("Llama: ", layers_.size(), " layers, expected n_layers ", config_.n_layers));
    for (std::size_t l = 0; l < layers_.size(); ++l)
      if (layers_[l].d_model() != config_.dim)
        throw shape_error(detail::cat("Llama: layer ", l, " has d_model ", layers_[l].d_model(), ", expected ", config_.dim));
    if (final_norm_.dim() != config_.dim)
      throw shape_error(detail::cat("Llama: final norm has dim ", final_norm_.dim(), ", expected ", config_.dim));
    if (classifier_.in_features() != config_.dim || classifier_.out_features() != config_.vocab_size)
      throw shape_error(detail::cat("Llama: classifier maps ", classifier_.in_features(), " -> ",
                                    classifier_.out_features(), ", expected ", config_.dim, " -> ", config_.vocab_size));
    caches_.reserve(layers_.size());
    for (auto& layer : layers_) {
      caches_.push_back(layer.self_attn().make_state(config_.seq_len));
      layer.self_attn().reserve_positions(config_.seq_len);
    }
    logits_.resize(1, config_.vocab_size);
  }

  const io::LlamaConfig& config() const noexcept { return config_; }
  std::vector<Layer>& layers() noexcept { return layers_; }
  const Matrix& embedding() const noexcept { return embedding_; }
  Lin& classifier() noexcept { return classifier_; }

  /// Positions held in the KV caches: the next token goes there.
  Index position() const noexcept { return caches_.empty() ? 0 : caches_.front().size(); }
  /// Starts a new sequence (the caches keep their memory).
  void reset() noexcept {
    for (auto& c : caches_) c.clear();
  }

  /// Runs `tokens` at positions position() onwards as one batch (a prompt's prefill, or one decoding step)
  /// and returns the logits of the last one, (vocab). With `all_logits`, logits() then holds every
  /// position's logits (n, vocab). Throws config_error for a token id outside the vocabulary or when the
  /// positions would pass config.seq_len; nothing changes then.
  std::span<const float> forward(std::span<const int> tokens, const Context& ctx, bool all_logits = false) {
    const char* func = "Llama::forward";
    ctx.validate(func);
    const Index n = static_cast<Index>(tokens.size());
    if (n < 1) throw config_error(detail::cat(func, ": no tokens, expected at least 1"));
    if (position() + n > config_.seq_len)
      throw config_error(detail::cat(func, ": positions ", position(), "..", position() + n - 1,
                                     " pass the model's seq_len ", config_.seq_len));
    for (Index i = 0; i < n; ++i)
      if (tokens[std::size_t(i)] < 0 || tokens[std::size_t(i)] >= config_.vocab_size)
        throw config_error(detail::cat(func, ": token ", i, " is ", tokens[std::size_t(i)], ", expected 0..",
                                       config_.vocab_size - 1));
    ensure_shape(x_, n, config_.dim);  // (n, dim)
    ensure_shape(y_, n, config_.dim);
    for (Index i = 0; i < n; ++i) x_.row(i) = embedding_.row(tokens[std::size_t(i)]);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      layers_[l].forward_cached(cview(x_), caches_[l], view(y_), ctx);
      x_.swap(y_);
    }
    // Only the rows whose logits are wanted go through the final norm and the classifier.
    const Index first = all_logits ? 0 : n - 1, rows = n - first;
    ensure_shape(normed_, rows, config_.dim);
    final_norm_.forward(block(cview(x_), first, 0, rows, config_.dim), view(normed_));
    ensure_shape(logits_, rows, config_.vocab_size);
    classifier_.forward(cview(normed_), view(logits_), ctx);
    return {logits_.data() + (rows - 1) * config_.vocab_size, static_cast<std::size_t>(config_.vocab_size)};
  }

  /// Logits of the last forward: (1, vocab), or (n, vocab) after forward(..., all_logits = true).
  const Matrix& logits() const noexcept { return logits_; }

 private:
  io::LlamaConfig config_{};
  Matrix embedding_;  // (vocab, dim)
  std::vector<Layer> layers_;
  RMSNorm final_norm_{};
  Lin classifier_{};
  std::vector<typename Attn::State> caches_;  // one per layer, for seq_len positions
  Matrix x_, y_, normed_, logits_;
};

/// A Llama over the float weights of a parsed llama2.c checkpoint, every layer's attention a copy of
/// `attention` (FullAttention by default; any IncrementalAttention policy, e.g. SlidingWindow for a bounded
/// cache) and every linear layer a `Lin` built from its weight (out, in) once: Dense keeps it, Int8 quantizes
/// it, LoRA<Inner> wraps it with no adapters yet. A shared classifier is built from a copy of the embedding.
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> make_llama(io::LlamaWeights w, const Attn& attention = Attn{}) {
  using Model = Llama<Attn, Lin>;
  using Layer = Model::Layer;
  const io::LlamaConfig& c = w.config;
  c.validate("make_llama");
  std::vector<Layer> layers;
  layers.reserve(static_cast<std::size_t>(c.n_layers));
  for (std::size_t l = 0; l < static_cast<std::size_t>(c.n_layers); ++l) {
    typename Layer::Attention attn(Lin(std::move(w.wq[l])), Lin(std::move(w.wk[l])), Lin(std::move(w.wv[l])),
                                   Lin(std::move(w.wo[l])), HeadConfig{c.n_heads, c.n_kv_heads, c.head_dim()},
                                   attention, RoPE<RotaryStyle::interleaved>(c.rope_theta));
    typename Layer::FFN ffn(Lin(std::move(w.w1[l])), Lin(std::move(w.w3[l])), Lin(std::move(w.w2[l])));
    layers.emplace_back(std::move(attn), std::move(ffn), RMSNorm(std::move(w.attn_norm[l]), c.norm_eps),
                        RMSNorm(std::move(w.ffn_norm[l]), c.norm_eps));
  }
  Lin classifier(c.shared_classifier ? Matrix(w.token_embedding) : std::move(w.classifier));
  return Model(c, std::move(w.token_embedding), std::move(layers), RMSNorm(std::move(w.final_norm), c.norm_eps),
               std::move(classifier));
}

/// Reads a llama2.c checkpoint (legacy, version 1 or 2) into a Llama over linear policy `Lin` and attention
/// policy `attention`: `load_llama2c(path)`, `load_llama2c<Int8>(path)`, `load_llama2c(path, SlidingWindow(64))`.
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> load_llama2c(const std::string& path, const Attn& attention = Attn{}) {
  return make_llama<Lin>(io::read_llama2c(path), attention);
}

}  // namespace polyformer
