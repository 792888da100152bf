#pragma once
/// \file T5 (Raffel et al. 2020; transformers' T5ForConditionalGeneration): an encoder and a decoder of pre-norm
/// blocks with RMS norms (T5LayerNorm: no mean, no bias), attention without biases or 1/√d scaling and with a
/// learned relative position bias (attention/relative_position.hpp: one table per stack, kept by the model and
/// handed to every block's self-attention, as transformers computes it in the first block and passes it on), a
/// ReLU FFN (T5) or a gated tanh-GELU one (v1.1, FLAN-T5), a shared embedding, and logits from that embedding
/// scaled by d_model^-½ when tied, else from lm_head. Decoding runs the encoder once; each decoder block projects
/// the encoder's keys and values once into its state.

#include <cmath>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/attention/relative_position.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/blocks/layer_stack.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/ffn.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// A T5's sizes (transformers' T5Config names in the comments).
struct T5Config {
  Index vocab_size = 0;          ///< vocab_size
  Index d_model = 0;             ///< d_model
  Index d_kv = 0;                ///< d_kv (heads · d_kv need not be d_model)
  Index n_heads = 0;             ///< num_heads
  Index d_ff = 0;                ///< d_ff
  Index n_layers = 0;            ///< num_layers (encoder)
  Index n_decoder_layers = 0;    ///< num_decoder_layers
  Index num_buckets = 32;        ///< relative_attention_num_buckets
  Index max_distance = 128;      ///< relative_attention_max_distance
  float norm_eps = 1e-6f;        ///< layer_norm_epsilon
  bool tied = true;              ///< tie_word_embeddings
  int decoder_start_token_id = 0;

  /// The number of values the weights hold (in floating point: a hostile config.json's sizes may overflow an
  /// integer), `gated` for a gated FFN. A loader compares it with what the files hold before allocating anything.
  double parameter_count(bool gated) const {
    const double d = double(d_model), inner = double(n_heads) * double(d_kv), ff = double(d_ff);
    const double attention = 4.0 * d * inner, ffn = (gated ? 3.0 : 2.0) * d * ff;
    const double encoder = double(n_layers) * (attention + ffn + 2.0 * d) + d;
    const double decoder = double(n_decoder_layers) * (2.0 * attention + ffn + 3.0 * d) + d;
    const double tables = 2.0 * double(num_buckets) * double(n_heads);
    return double(vocab_size) * d * (tied ? 1.0 : 2.0) + encoder + decoder + tables;
  }

  /// Throws config_error naming `func` and the field unless every size is usable.
  void validate(const char* func) const {
    const auto positive = [&](const char* name, Index v) {
      if (v < 1) throw config_error(detail::cat(func, ": ", name, " is ", v, ", expected >= 1"));
    };
    positive("vocab_size", vocab_size);
    positive("d_model", d_model);
    positive("d_kv", d_kv);
    positive("num_heads", n_heads);
    positive("d_ff", d_ff);
    positive("num_layers", n_layers);
    positive("num_decoder_layers", n_decoder_layers);
    RelativePositionBuckets{num_buckets, max_distance, true}.validate(func);
    RelativePositionBuckets{num_buckets, max_distance, false}.validate(func);
    if (!(norm_eps > 0.0f)) throw config_error(detail::cat(func, ": layer_norm_epsilon is ", norm_eps, ", expected > 0"));
    if (decoder_start_token_id < 0 || decoder_start_token_id >= vocab_size)
      throw config_error(detail::cat(func, ": decoder_start_token_id is ", decoder_start_token_id, ", expected 0..",
                                     vocab_size - 1));
  }
};

/// transformers' names of a T5 block's tensors ("encoder.block.<i>." / "decoder.block.<i>." + these).
inline BlockNames t5_block_names(bool decoder, bool gated) {
  BlockNames n;
  n.self_attn = "layer.0.SelfAttention.";
  n.cross_attn = "layer.1.EncDecAttention.";
  n.attention = AttentionNames{.q = "q.", .k = "k.", .v = "v.", .o = "o."};
  n.norm1 = "layer.0.layer_norm.";
  n.norm2 = "layer.1.layer_norm.";
  n.norm3 = "layer.2.layer_norm.";
  n.ffn = decoder ? "layer.2.DenseReluDense." : "layer.1.DenseReluDense.";
  n.ffn_names = FFNNames{.gate = "wi_0.", .up = gated ? "wi_1." : "wi.", .down = "wo."};
  return n;
}

/// T5 over FFN activation `Act` (ReLU: T5; GeGLUTanh: v1.1 and FLAN-T5), linear policy `Lin` and attention policy
/// `Attn`, which runs every head of the self-attention with T5's relative position bias added to its scores: a policy
/// that takes an additive bias (AdditiveBiasAttention: FullAttention, SlidingWindow, Blockwise); the others fail to
/// compile. The decoder's cross-attention stays full: every decoder position reads the whole encoder output.
template <ActivationPolicy Act = ReLU, LinearPolicy Lin = Dense, AttentionPolicy Attn = FullAttention>
class T5 {
  static_assert(AdditiveBiasAttention<Attn>,
                "T5: the attention policy does not add an additive bias to its scores (supports_additive_bias): "
                "T5's relative position bias cannot run on it");

 public:
  using activation_type = Act;
  using linear_type = Lin;
  using attention_type = Attn;
  using Attention = RelativePositionAttention<Attn>;
  using CrossAttention = RelativePositionAttention<FullAttention>;  // unbiased, over the whole encoder output
  using EncoderLayerType = EncoderLayer<Attention, Lin, RMSNorm, Act, NormPlacement::pre>;
  using DecoderLayerType = DecoderLayer<Attention, Lin, RMSNorm, Act, NormPlacement::pre, NoRotary, CrossAttention>;
  using EncoderStack = LayerStack<EncoderLayerType>;
  using DecoderStack = LayerStack<DecoderLayerType>;

  /// One sequence's decoding: the decoder stack's state over the encoder's output, its scratch, the last logits.
  struct DecoderState {
    typename DecoderStack::State stack;
    typename DecoderStack::Workspace ws;
    Matrix x, y, logits;  // (n, d_model) ×2, (1, vocab)
    Index size() const noexcept { return stack.size(); }
  };

  T5() = default;
  /// The parts, built by make_t5 (or a loader); `encoder_table` and `decoder_table` (num_buckets, heads) are handed
  /// to every block's self-attention.
  T5(T5Config config, Matrix shared, EncoderStack encoder, DecoderStack decoder, std::optional<Lin> lm_head)
      : config_(config), shared_(std::move(shared)), encoder_(std::move(encoder)), decoder_(std::move(decoder)),
        lm_head_(std::move(lm_head)) {
    config_.validate("T5");
    check_shape(shared_, config_.vocab_size, config_.d_model, "T5", "shared embedding");
    if (!config_.tied && !lm_head_) throw config_error("T5: an untied model needs its lm_head");
  }

  const T5Config& config() const noexcept { return config_; }
  const EncoderStack& encoder() const noexcept { return encoder_; }
  const DecoderStack& decoder() const noexcept { return decoder_; }

  /// The encoder's output (n, d_model) for one sequence of ids; `mask` (n; 1 = token, 0 = padding) or empty.
  Matrix encode(std::span<const int> ids, std::span<const int> mask, const Context& ctx) const {
    const char* func = "T5::encode";
    const Index n = static_cast<Index>(ids.size());
    if (n < 1) throw config_error(detail::cat(func, ": no tokens, expected at least 1"));
    Matrix x = embed(ids, func), y(n, config_.d_model);
    Matrix padding;
    MaskSpec spec;
    if (!mask.empty()) {
      padding = key_padding(mask, n, func);
      spec.key_padding = ConstMatrixRef(padding);
    }
    typename EncoderStack::Workspace ws;
    encoder_.forward(cview(x), 1, spec, view(y), ws, ctx);
    return y;
  }

  /// A decoding state over `memory` (the encoder's output of one sequence) and its `mask` (or empty), for
  /// `capacity` decoder positions.
  DecoderState start(const Matrix& memory, std::span<const int> mask, Index capacity, const Context& ctx) const {
    DecoderState s;
    std::optional<ConstMatrixRef> padding;
    Matrix rows;
    if (!mask.empty()) {
      rows = key_padding(mask, memory.rows(), "T5::start");
      padding = ConstMatrixRef(rows);
    }
    s.stack = decoder_.make_state(capacity, cview(memory), ctx, padding);
    return s;
  }

  /// Decodes `tokens` at the positions after those in `state` and returns the last one's logits (vocab).
  std::span<const float> decode(DecoderState& state, std::span<const int> tokens, const Context& ctx) const {
    const char* func = "T5::decode";
    const Index n = static_cast<Index>(tokens.size());
    if (n < 1) throw config_error(detail::cat(func, ": no tokens, expected at least 1"));
    state.x = embed(tokens, func);
    ensure_shape(state.y, n, config_.d_model);
    decoder_.forward_cached(cview(state.x), state.stack, view(state.y), state.ws, ctx);
    ensure_shape(state.logits, 1, config_.vocab_size);
    logits(block(cview(state.y), n - 1, 0, 1, config_.d_model), view(state.logits), ctx);
    return {state.logits.data(), static_cast<std::size_t>(config_.vocab_size)};
  }

  /// Teacher-forced logits (m, vocab) of decoder ids over `memory` and its mask, as T5ForConditionalGeneration's
  /// forward gives them; the decoder's output (m, d_model), after its final norm, into `last_hidden_state` if given.
  Matrix forward(const Matrix& memory, std::span<const int> mask, std::span<const int> decoder_ids, const Context& ctx,
                 Matrix* last_hidden_state = nullptr) const {
    const Index m = static_cast<Index>(decoder_ids.size());
    DecoderState state = start(memory, mask, m, ctx);
    state.x = embed(decoder_ids, "T5::forward");
    ensure_shape(state.y, m, config_.d_model);
    decoder_.forward_cached(cview(state.x), state.stack, view(state.y), state.ws, ctx);
    Matrix out(m, config_.vocab_size);
    logits(cview(state.y), view(out), ctx);
    if (last_hidden_state) *last_hidden_state = std::move(state.y);
    return out;
  }

  /// transformers' names: shared.weight, encoder.block.<i>.…, encoder.final_layer_norm.weight, the decoder's
  /// likewise, each stack's relative_attention_bias in its first block, lm_head.weight when untied.
  void parameters(ParameterList& list, const std::string& prefix = "") {
    list.add_matrix(prefix + "shared.weight", shared_);
    const bool gated = Act::gated;
    for (int decoder = 0; decoder < 2; ++decoder) {
      const std::string stack = prefix + (decoder ? "decoder." : "encoder.");
      const BlockNames names = t5_block_names(decoder != 0, gated);
      const auto add_stack = [&](auto& layers, auto& final_norm) {
        for (std::size_t l = 0; l < layers.size(); ++l)
          layers[l].parameters(list, detail::cat(stack, "block.", l, "."), names);
        final_norm->parameters(list, stack + "final_layer_norm.");
        // The stack's one table, read from the first block and written to every block.
        const Index buckets = config_.num_buckets, heads = config_.n_heads;
        auto* all = &layers;
        list.add({stack + "block.0.layer.0.SelfAttention.relative_attention_bias.weight", {buckets, heads},
                  [all, buckets, heads](float* out) {
                    const auto& table = (*all)[0].self_attn().attention().table();
                    std::copy_n(table->data(), buckets * heads, out);
                  },
                  [all, buckets, heads](const float* in) {
                    auto table = std::make_shared<const Matrix>(Eigen::Map<const Matrix>(in, buckets, heads));
                    for (auto& layer : *all) {
                      Attention& a = layer.self_attn().attention();
                      a = Attention(table, a.buckets(), a.inner());
                    }
                  }});
      };
      if (decoder) add_stack(decoder_.layers(), decoder_.final_norm());
      else add_stack(encoder_.layers(), encoder_.final_norm());
    }
    if (lm_head_) lm_head_->parameters(list, prefix + "lm_head.");
  }

 private:
  Matrix embed(std::span<const int> ids, const char* func) const {
    Matrix x(static_cast<Index>(ids.size()), config_.d_model);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= config_.vocab_size)
        throw config_error(detail::cat(func, ": token ", i, " is ", ids[i], ", expected 0..", config_.vocab_size - 1));
      x.row(Index(i)) = shared_.row(ids[i]);
    }
    return x;
  }

  /// (1, n): 1 for a padded position (mask 0), 0 for a token; config_error unless mask has n entries of 0 or 1.
  static Matrix key_padding(std::span<const int> mask, Index n, const char* func) {
    if (static_cast<Index>(mask.size()) != n)
      throw config_error(detail::cat(func, ": the mask has ", mask.size(), " entries, expected ", n));
    Matrix padding(1, n);
    for (Index j = 0; j < n; ++j) {
      const int m = mask[std::size_t(j)];
      if (m != 0 && m != 1) throw config_error(detail::cat(func, ": mask[", j, "] is ", m, ", expected 0 or 1"));
      padding(0, j) = m == 0 ? 1.0f : 0.0f;
    }
    return padding;
  }

  /// logits (rows, vocab) of decoder outputs y (rows, d_model).
  void logits(ConstMatrixView y, MatrixView out, const Context& ctx) const {
    if (lm_head_) {
      lm_head_->forward(y, out, ctx);
      return;
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(config_.d_model));  // transformers' tied rescaling
    kernels::gemm(y, cview(shared_), kernels::Transpose::yes, out, scale, 0.0f, ctx.threads);
  }

  T5Config config_{};
  Matrix shared_;  // (vocab, d_model)
  EncoderStack encoder_;
  DecoderStack decoder_;
  std::optional<Lin> lm_head_;  // untied only
};

/// A T5 of the sizes in `config` with zero weights (unit norm gains, zero bias tables), to be filled by name through
/// parameters() and load_state_dict; every self-attention runs on `attention_policy` (its settings; T5's bias is
/// added to its scores), the cross-attention on FullAttention.
template <ActivationPolicy Act = ReLU, LinearPolicy Lin = Dense, AttentionPolicy Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
T5<Act, Lin, Attn> make_t5(const T5Config& c, const Attn& attention_policy = Attn{}) {
  using Model = T5<Act, Lin, Attn>;
  using Policy = typename Model::Attention;
  c.validate("make_t5");
  const Index d = c.d_model, inner = c.n_heads * c.d_kv, ff = c.d_ff;
  const auto zero = [](Index out, Index in) { return zero_linear<Lin>(out, in, /*bias=*/false); };
  const auto table = std::make_shared<const Matrix>(Matrix::Zero(c.num_buckets, c.n_heads));
  const HeadConfig heads{c.n_heads, c.n_heads, c.d_kv};
  const auto attention = [&](bool bidirectional) {
    const Policy policy(table, {c.num_buckets, c.max_distance, bidirectional}, attention_policy);
    return MultiHeadAttention<Policy, Lin>(zero(inner, d), zero(inner, d), zero(inner, d), zero(d, inner), heads, policy);
  };
  const auto cross_attention = [&] {
    using Cross = typename Model::CrossAttention;
    return MultiHeadAttention<Cross, Lin>(zero(inner, d), zero(inner, d), zero(inner, d), zero(d, inner), heads, Cross());
  };
  const auto ffn = [&] {
    using FFN = FeedForward<Lin, Act>;
    if constexpr (Act::gated) return FFN(zero(ff, d), zero(ff, d), zero(d, ff));
    else return FFN(zero(ff, d), zero(d, ff));
  };
  const auto norm = [&] { return RMSNorm(d, c.norm_eps); };
  std::vector<typename Model::EncoderLayerType> encoder;
  for (Index l = 0; l < c.n_layers; ++l) encoder.emplace_back(attention(true), ffn(), norm(), norm());
  std::vector<typename Model::DecoderLayerType> decoder;
  for (Index l = 0; l < c.n_decoder_layers; ++l)
    decoder.emplace_back(attention(false), cross_attention(), ffn(), norm(), norm(), norm());
  std::optional<Lin> lm_head;
  if (!c.tied) lm_head.emplace(zero(c.vocab_size, d));
  return Model(c, Matrix::Zero(c.vocab_size, d), typename Model::EncoderStack(std::move(encoder), norm()),
               typename Model::DecoderStack(std::move(decoder), norm()), std::move(lm_head));
}

}  // namespace polyformer
