#pragma once
/// \file BERT (Devlin et al. 2019) composed from polyformer's policies, as transformers' BertModel and
/// BertForMaskedLM: word + learned position + token-type embeddings and LayerNorm → post-norm encoder layers
/// with GELU (erf) FFNs, attending under a padding mask → last hidden state; optionally the pooler (tanh of a
/// dense layer over each sequence's first token) and the masked-LM head (dense, GELU, LayerNorm, then the word
/// embeddings themselves as the decoder, plus a bias). RoBERTa is the same model with positions counted from
/// its padding id (BertConfig::padding_idx).

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/blocks/block_names.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/blocks/layer_stack.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// A BERT's sizes (transformers' BertConfig names in the comments).
struct BertConfig {
  Index vocab_size = 0;         ///< vocab_size
  Index dim = 0;                ///< hidden_size
  Index n_layers = 0;           ///< num_hidden_layers
  Index n_heads = 0;            ///< num_attention_heads
  Index hidden_dim = 0;         ///< intermediate_size
  Index max_positions = 0;      ///< max_position_embeddings
  Index type_vocab_size = 2;    ///< type_vocab_size
  float norm_eps = 1e-12f;      ///< layer_norm_eps
  /// RoBERTa's pad_token_id: positions count from padding_idx + 1 over a sequence's non-pad ids, and a pad id sits
  /// at position padding_idx (transformers' create_position_ids_from_input_ids). -1: BERT's positions 0, 1, ….
  Index padding_idx = -1;

  /// The longest sequence the position embeddings cover.
  Index max_sequence() const noexcept { return padding_idx < 0 ? max_positions : max_positions - padding_idx - 1; }

  /// Throws config_error naming `func` and the field unless every size is usable.
  void validate(const char* func) const {
    const auto positive = [&](const char* name, Index v) {
      if (v < 1) throw config_error(detail::cat(func, ": ", name, " is ", v, ", expected >= 1"));
    };
    positive("vocab_size", vocab_size);
    positive("hidden_size", dim);
    positive("num_hidden_layers", n_layers);
    positive("num_attention_heads", n_heads);
    positive("intermediate_size", hidden_dim);
    positive("max_position_embeddings", max_positions);
    positive("type_vocab_size", type_vocab_size);
    if (dim % n_heads != 0)
      throw config_error(detail::cat(func, ": hidden_size ", dim, " is not a multiple of num_attention_heads ", n_heads));
    if (!(norm_eps > 0.0f) || !std::isfinite(norm_eps))
      throw config_error(detail::cat(func, ": layer_norm_eps is ", norm_eps, ", expected > 0"));
    if (padding_idx < -1 || (padding_idx >= 0 && (padding_idx >= vocab_size || padding_idx + 1 >= max_positions)))
      throw config_error(detail::cat(func, ": pad_token_id (RoBERTa's padding_idx) is ", padding_idx,
                                     ", expected -1 (BERT's positions) or 0..", std::min(vocab_size, max_positions - 1) - 1));
  }
};

/// One call's inputs, as transformers takes them: `batch` sequences of equal length laid out one after another.
struct BertInputs {
  std::span<const int> input_ids;       ///< (batch·seq)
  Index batch = 1;
  std::span<const int> attention_mask;  ///< (batch·seq): 1 = a token, 0 = padding; empty = all tokens
  std::span<const int> token_type_ids;  ///< (batch·seq); empty = all 0
};

/// transformers' names of a BERT layer's tensors ("encoder.layer.<i>." + these).
inline BlockNames bert_block_names() {
  BlockNames n;
  n.self_attn = "attention.";
  n.attention = AttentionNames{.q = "self.query.", .k = "self.key.", .v = "self.value.", .o = "output.dense."};
  n.ffn = "";
  n.ffn_names = FFNNames{.gate = "", .up = "intermediate.dense.", .down = "output.dense."};
  n.norm1 = "attention.output.LayerNorm.";
  n.norm2 = "output.LayerNorm.";
  return n;
}

/// BERT over attention policy `Attn` and linear policy `Lin` (every projection, the pooler and the MLM
/// transform). Weights only, used through `const`: one model serves any number of threads, each with its own
/// Workspace.
template <AttentionPolicy Attn = FullAttention, LinearPolicy Lin = Dense>
class Bert {
 public:
  using Layer = EncoderLayer<Attn, Lin, LayerNorm, GELU, NormPlacement::post>;
  using Encoder = LayerStack<Layer>;

  /// The input embeddings: word (vocab, d), position (max_positions, d), token type (types, d), and their norm.
  struct Embeddings {
    Matrix word, position, token_type;
    LayerNorm norm;
  };
  /// The masked-LM head: logits = LayerNorm(GELU(transform · h)) · wordᵀ + bias.
  struct MaskedLMHead {
    Lin transform;
    LayerNorm norm;
    Vector bias;  // (vocab)
  };

  /// One caller's scratch.
  struct Workspace {
    typename Encoder::Workspace encoder;
    Matrix x;                    // (rows, d): the embeddings
    Matrix padding;              // (batch, seq): nonzero = padded key
    Matrix first, dense;         // (batch, d): each sequence's first token; the pooler's dense output
    Matrix transformed, normed;  // (rows, d): the MLM head's transform, then its norm
  };

  /// Everything one call computes: last_hidden_state (batch·seq, d), pooler_output (batch, d) with a pooler,
  /// logits (batch·seq, vocab) with an MLM head (empty otherwise).
  struct Output {
    Matrix last_hidden_state, pooler_output, logits;
  };

  Bert() = default;
  /// `layers` (config.n_layers of them); `pooler` (d → d) and `mlm` are optional, as BertModel and
  /// BertForMaskedLM carry one or the other.
  Bert(BertConfig config, Embeddings embeddings, std::vector<Layer> layers, std::optional<Lin> pooler,
       std::optional<MaskedLMHead> mlm)
      : config_(config), embeddings_(std::move(embeddings)), encoder_(std::move(layers)), pooler_(std::move(pooler)),
        mlm_(std::move(mlm)) {
    const char* func = "Bert";
    config_.validate(func);
    const Index d = config_.dim;
    check_shape(embeddings_.word, config_.vocab_size, d, func, "word embeddings");
    check_shape(embeddings_.position, config_.max_positions, d, func, "position embeddings");
    check_shape(embeddings_.token_type, config_.type_vocab_size, d, func, "token type embeddings");
    if (embeddings_.norm.dim() != d)
      throw shape_error(detail::cat(func, ": embedding norm has dim ", embeddings_.norm.dim(), ", expected ", d));
    if (static_cast<Index>(encoder_.layers().size()) != config_.n_layers)
      throw config_error(detail::cat(func, ": ", encoder_.layers().size(), " layers, expected ", config_.n_layers));
    if (encoder_.d_model() != d)
      throw shape_error(detail::cat(func, ": layers have d_model ", encoder_.d_model(), ", expected ", d));
    if (pooler_ && (pooler_->in_features() != d || pooler_->out_features() != d))
      throw shape_error(detail::cat(func, ": pooler maps ", pooler_->in_features(), " -> ", pooler_->out_features(),
                                    ", expected ", d, " -> ", d));
    if (mlm_) {
      if (mlm_->transform.in_features() != d || mlm_->transform.out_features() != d)
        throw shape_error(detail::cat(func, ": MLM transform maps ", mlm_->transform.in_features(), " -> ",
                                      mlm_->transform.out_features(), ", expected ", d, " -> ", d));
      if (mlm_->norm.dim() != d)
        throw shape_error(detail::cat(func, ": MLM norm has dim ", mlm_->norm.dim(), ", expected ", d));
      if (mlm_->bias.size() != config_.vocab_size)
        throw shape_error(detail::cat(func, ": MLM bias has ", mlm_->bias.size(), " entries, expected vocab_size ",
                                      config_.vocab_size));
    }
  }

  const BertConfig& config() const noexcept { return config_; }
  const Embeddings& embeddings() const noexcept { return embeddings_; }
  // Mutable access is for setting the model up (adapters, quantization); forward never needs it.
  std::vector<Layer>& layers() noexcept { return encoder_.layers(); }
  const std::vector<Layer>& layers() const noexcept { return encoder_.layers(); }
  bool has_pooler() const noexcept { return pooler_.has_value(); }
  bool has_mlm_head() const noexcept { return mlm_.has_value(); }

  /// Every tensor by transformers' name under `prefix`: "embeddings.word_embeddings.weight" …,
  /// "encoder.layer.<i>.attention.self.query.weight" …, "pooler.dense.*" with a pooler, and
  /// "cls.predictions.transform.dense.*", "cls.predictions.transform.LayerNorm.*", "cls.predictions.bias" with
  /// an MLM head (its decoder is the word embeddings).
  void parameters(ParameterList& list, const std::string& prefix) {
    list.add_matrix(prefix + "embeddings.word_embeddings.weight", embeddings_.word);
    list.add_matrix(prefix + "embeddings.position_embeddings.weight", embeddings_.position);
    list.add_matrix(prefix + "embeddings.token_type_embeddings.weight", embeddings_.token_type);
    embeddings_.norm.parameters(list, prefix + "embeddings.LayerNorm.");
    const BlockNames names = bert_block_names();
    for (std::size_t l = 0; l < layers().size(); ++l)
      layers()[l].parameters(list, detail::cat(prefix, "encoder.layer.", l, "."), names);
    if (pooler_) pooler_->parameters(list, prefix + "pooler.dense.");
    if (mlm_) {
      mlm_->transform.parameters(list, prefix + "cls.predictions.transform.dense.");
      mlm_->norm.parameters(list, prefix + "cls.predictions.transform.LayerNorm.");
      list.add_vector(prefix + "cls.predictions.bias", mlm_->bias);
    }
  }

  /// The last hidden state (batch·seq, d) of `in` into `hidden`. Throws config_error naming the argument for
  /// ids outside the vocabulary or the token types, masks of the wrong size or with values other than 0 and 1,
  /// a sequence longer than max_sequence(), or a sequence whose mask is all 0 (it would attend to nothing).
  void forward(const BertInputs& in, MatrixView hidden, Workspace& ws, const Context& ctx) const {
    const char* func = "Bert::forward";
    ctx.validate(func);
    const Index rows = static_cast<Index>(in.input_ids.size()), d = config_.dim;
    if (in.batch < 1 || rows == 0 || rows % in.batch != 0)
      throw config_error(detail::cat(func, ": ", rows, " input ids for batch ", in.batch, ", expected a positive multiple"));
    const Index seq = rows / in.batch;
    if (seq > config_.max_sequence())
      throw config_error(detail::cat(func, ": sequences of ", seq, " tokens, expected at most ", config_.max_sequence(),
                                     " (max_position_embeddings ", config_.max_positions,
                                     config_.padding_idx >= 0 ? " less padding_idx + 1)" : ")"));
    check_ids(func, "input_ids", in.input_ids, config_.vocab_size);
    if (!in.token_type_ids.empty()) {
      check_size(func, "token_type_ids", in.token_type_ids, rows);
      check_ids(func, "token_type_ids", in.token_type_ids, config_.type_vocab_size);
    }
    check_shape(hidden, rows, d, func, "hidden");
    MaskSpec mask;
    if (!in.attention_mask.empty()) {
      check_size(func, "attention_mask", in.attention_mask, rows);
      ensure_shape(ws.padding, in.batch, seq);
      bool any_padded = false;
      for (Index b = 0; b < in.batch; ++b) {
        bool any_token = false;
        for (Index s = 0; s < seq; ++s) {
          const int m = in.attention_mask[std::size_t(b * seq + s)];
          if (m != 0 && m != 1)
            throw config_error(detail::cat(func, ": attention_mask[", b * seq + s, "] is ", m, ", expected 0 or 1"));
          ws.padding(b, s) = m == 0 ? 1.0f : 0.0f;
          any_token |= m == 1;
          any_padded |= m == 0;
        }
        if (!any_token)
          throw config_error(detail::cat(func, ": attention_mask of sequence ", b, " is all 0, expected a token"));
      }
      if (any_padded) mask.key_padding = ConstMatrixRef(ws.padding);
    }
    ensure_shape(ws.x, rows, d);
    Index counted = 0;  // RoBERTa: the sequence's non-pad ids so far
    for (Index r = 0; r < rows; ++r) {
      const int id = in.input_ids[std::size_t(r)];
      const int type = in.token_type_ids.empty() ? 0 : in.token_type_ids[std::size_t(r)];
      Index position = r % seq;
      if (config_.padding_idx >= 0) {
        if (position == 0) counted = 0;
        position = id == config_.padding_idx ? config_.padding_idx : config_.padding_idx + ++counted;
      }
      ws.x.row(r) = embeddings_.word.row(id) + embeddings_.position.row(position) + embeddings_.token_type.row(type);
    }
    embeddings_.norm.forward(cview(ws.x), view(ws.x));
    encoder_.forward(cview(ws.x), in.batch, mask, hidden, ws.encoder, ctx);
  }

  /// The pooler: pooled (batch, d) = tanh(dense(h of each sequence's first token)) from hidden (batch·seq, d).
  void pool(ConstMatrixView hidden, Index batch, MatrixView pooled, Workspace& ws, const Context& ctx) const {
    const char* func = "Bert::pool";
    if (!pooler_) throw config_error(detail::cat(func, ": the model has no pooler (BertModel's pooler.dense)"));
    if (batch < 1 || hidden.rows() % batch != 0)
      throw shape_error(detail::cat(func, ": hidden has ", hidden.rows(), " rows, expected a multiple of batch ", batch));
    check_cols(hidden, config_.dim, func, "hidden");
    check_shape(pooled, batch, config_.dim, func, "pooled");
    const Index seq = hidden.rows() / batch;
    ensure_shape(ws.first, batch, config_.dim);
    for (Index b = 0; b < batch; ++b) ws.first.row(b) = hidden.row(b * seq);
    pooler_->forward(cview(ws.first), pooled, ctx);
    pooled = pooled.array().tanh().matrix();
  }

  /// The masked-LM head: logits (rows, vocab) of hidden (rows, d).
  void mlm_logits(ConstMatrixView hidden, MatrixView logits, Workspace& ws, const Context& ctx) const {
    const char* func = "Bert::mlm_logits";
    if (!mlm_) throw config_error(detail::cat(func, ": the model has no masked-LM head (cls.predictions)"));
    check_cols(hidden, config_.dim, func, "hidden");
    check_shape(logits, hidden.rows(), config_.vocab_size, func, "logits");
    ensure_shape(ws.transformed, hidden.rows(), config_.dim);
    ensure_shape(ws.normed, hidden.rows(), config_.dim);
    mlm_->transform.forward(hidden, view(ws.transformed), ctx);
    GELU::apply(ws.transformed.data(), ws.transformed.data(), static_cast<std::size_t>(ws.transformed.size()));
    mlm_->norm.forward(cview(ws.transformed), view(ws.normed));
    kernels::gemm(cview(ws.normed), cview(embeddings_.word), kernels::Transpose::yes, logits, 1.0f, 0.0f, ctx.threads);
    logits.rowwise() += mlm_->bias.transpose();
  }

  /// Convenience: every output the model has, with a workspace of this call's.
  Output forward(const BertInputs& in, const Context& ctx = {}) const {
    Output out;
    Workspace ws;
    out.last_hidden_state.resize(static_cast<Index>(in.input_ids.size()), config_.dim);
    forward(in, view(out.last_hidden_state), ws, ctx);
    if (pooler_) {
      out.pooler_output.resize(in.batch, config_.dim);
      pool(cview(out.last_hidden_state), in.batch, view(out.pooler_output), ws, ctx);
    }
    if (mlm_) {
      out.logits.resize(out.last_hidden_state.rows(), config_.vocab_size);
      mlm_logits(cview(out.last_hidden_state), view(out.logits), ws, ctx);
    }
    return out;
  }

 private:
  static void check_size(const char* func, const char* what, std::span<const int> v, Index rows) {
    if (static_cast<Index>(v.size()) != rows)
      throw config_error(detail::cat(func, ": ", what, " has ", v.size(), " entries, expected ", rows, " (as input_ids)"));
  }
  static void check_ids(const char* func, const char* what, std::span<const int> ids, Index limit) {
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (ids[i] < 0 || ids[i] >= limit)
        throw config_error(detail::cat(func, ": ", what, "[", i, "] is ", ids[i], ", expected 0..", limit - 1));
  }

  BertConfig config_{};
  Embeddings embeddings_{};
  Encoder encoder_{};
  std::optional<Lin> pooler_;
  std::optional<MaskedLMHead> mlm_;
};

/// A Bert of the sizes in `config` with zero weights (unit norm gains), with a pooler and/or an MLM head, to be
/// filled by name through parameters() and load_state_dict.
template <LinearPolicy Lin = Dense, AttentionPolicy Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix, Vector>
Bert<Attn, Lin> make_bert(const BertConfig& c, bool pooler, bool mlm_head, const Attn& attention = Attn{}) {
  using Model = Bert<Attn, Lin>;
  using Layer = typename Model::Layer;
  c.validate("make_bert");
  const Index d = c.dim, h = c.hidden_dim;
  const auto zero = [](Index out, Index in) { return zero_linear<Lin>(out, in, /*bias=*/true); };
  std::vector<Layer> layers;
  layers.reserve(static_cast<std::size_t>(c.n_layers));
  for (Index l = 0; l < c.n_layers; ++l) {
    typename Layer::Attention attn(zero(d, d), zero(d, d), zero(d, d), zero(d, d), HeadConfig{c.n_heads}, attention);
    typename Layer::FFN ffn(zero(h, d), zero(d, h));
    layers.emplace_back(std::move(attn), std::move(ffn), LayerNorm(d, c.norm_eps), LayerNorm(d, c.norm_eps));
  }
  typename Model::Embeddings embeddings{Matrix::Zero(c.vocab_size, d), Matrix::Zero(c.max_positions, d),
                                        Matrix::Zero(c.type_vocab_size, d), LayerNorm(d, c.norm_eps)};
  std::optional<Lin> pool;
  if (pooler) pool.emplace(zero(d, d));
  std::optional<typename Model::MaskedLMHead> mlm;
  if (mlm_head) mlm.emplace(typename Model::MaskedLMHead{zero(d, d), LayerNorm(d, c.norm_eps), Vector::Zero(c.vocab_size)});
  return Model(c, std::move(embeddings), std::move(layers), std::move(pool), std::move(mlm));
}

}  // namespace polyformer
