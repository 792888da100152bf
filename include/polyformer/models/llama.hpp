#pragma once
/// \file Llama-2-architecture decoder-only model (Touvron et al. 2023) composed from polyformer's policies:
/// token embedding → layers of pre-norm RMSNorm, grouped-query self-attention with interleaved RoPE and SwiGLU
/// FFN (DecoderLayer without cross-attention, decoding over a KV cache) → final RMSNorm → classifier. Loads
/// llama2.c checkpoints.

#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/kernels/gemm_nt.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/transpose.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/layers/rotary.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// A decoder-only Llama model over attention policy `Attn` and linear policy `Lin`. The model holds weights
/// only and is used through `const`: one loaded model serves any number of sequences from any number of
/// threads. What a sequence carries (a KV cache per layer, sized for config.seq_len positions when made, so
/// decoding allocates nothing per token) is its State; a call's scratch is a Workspace (one per thread).
/// Sequence bundles the two for the common one-sequence case.
template <IncrementalAttention Attn = FullAttention, LinearPolicy Lin = Dense>
class Llama {
 public:
  using Layer = DecoderLayer<Attn, Lin, RMSNorm, SwiGLU, NormPlacement::pre, RoPE<RotaryStyle::interleaved>,
                             NoCrossAttention>;

  /// One sequence: every layer's attention state. position() is where its next token goes.
  struct State {
    std::vector<typename Attn::State> caches;  // one per layer
    Index position() const noexcept { return caches.empty() ? 0 : caches.front().size(); }
    void clear() noexcept {  ///< starts a new sequence; the caches keep their memory
      for (auto& c : caches) c.clear();
    }
  };

  /// One caller's scratch. After a forward, logits holds the wanted positions' logits (rows, vocab).
  struct Workspace {
    typename Layer::Workspace layer;
    Matrix x, y, normed, logits;              // (rows, dim), (rows, dim), (wanted, dim), (wanted, vocab)
    std::vector<typename Attn::State*> layer_states;
    std::vector<Index> rows, wanted;          // per sequence: new rows; the rows whose logits are wanted
  };

  /// What a training forward keeps for its backward (one per call in flight): the tokens, every layer's own, the
  /// final norm's input and output, and the backward's scratch.
  struct Saved : SavedForward {
    std::vector<typename Layer::Saved> layers;
    std::vector<int> tokens;  ///< (batch·seq)
    Index batch = 1;
    Matrix x, y;              ///< (rows, dim): the layers' ping-pong pair; y ends as the last layer's output
    Matrix normed;            ///< (rows, dim): the final norm's output, the classifier's input
    Matrix grad, grad_buffer, grad_normed, normed_t, embedding_grad_t;  ///< backward's
  };

  /// The gradients of every tensor: the embedding (vocab, dim; from the input and, tied, from the classifier), the
  /// layers', the final norm's and an untied classifier's.
  struct Gradients {
    Matrix embedding;
    std::vector<typename Layer::Gradients> layers;
    RMSNorm::Gradients norm{};
    typename Lin::Gradients classifier{};  ///< untied only
  };

  Llama() = default;

  /// embedding (vocab, dim); layers; final norm; classifier dim → vocab, or none for a classifier tied to the
  /// embedding, which then computes the logits from the embedding itself (no second copy of it).
  Llama(io::LlamaConfig config, Matrix embedding, std::vector<Layer> layers, RMSNorm final_norm,
        std::optional<Lin> classifier)
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
    if (classifier_ && (classifier_->in_features() != config_.dim || classifier_->out_features() != config_.vocab_size))
      throw shape_error(detail::cat("Llama: classifier maps ", classifier_->in_features(), " -> ",
                                    classifier_->out_features(), ", expected ", config_.dim, " -> ", config_.vocab_size));
    for (auto& layer : layers_) layer.self_attn().reserve_positions(config_.seq_len);
  }

  const io::LlamaConfig& config() const noexcept { return config_; }
  // Mutable access is for setting the model up (adapters, quantization); forward never needs it.
  std::vector<Layer>& layers() noexcept { return layers_; }
  const std::vector<Layer>& layers() const noexcept { return layers_; }
  const Matrix& embedding() const noexcept { return embedding_; }
  /// The classifier, or nullptr when it is tied to the embedding.
  Lin* classifier() noexcept { return classifier_ ? &*classifier_ : nullptr; }
  const Lin* classifier() const noexcept { return classifier_ ? &*classifier_ : nullptr; }
  const RMSNorm& final_norm() const noexcept { return final_norm_; }

  /// Every tensor by llama2.c model.py's name under `prefix`: "tok_embeddings.weight", "layers.<i>.attention.wq.weight"
  /// … "layers.<i>.feed_forward.w2.weight", "layers.<i>.attention_norm.weight", "layers.<i>.ffn_norm.weight",
  /// "norm.weight", and "output.weight" unless the classifier is tied to the embedding.
  void parameters(ParameterList& list, const std::string& prefix) {
    const BlockNames names = llama2c_block_names();
    list.add_matrix(prefix + "tok_embeddings.weight", embedding_);
    for (std::size_t l = 0; l < layers_.size(); ++l) layers_[l].parameters(list, detail::cat(prefix, "layers.", l, "."), names);
    final_norm_.parameters(list, prefix + "norm.");
    if (classifier_) classifier_->parameters(list, prefix + "output.");
  }

  Gradients make_gradients() const requires TrainableLinear<Lin> {
    Gradients g;
    g.embedding = Matrix::Zero(embedding_.rows(), embedding_.cols());
    for (const Layer& layer : layers_) g.layers.push_back(layer.make_gradients());
    g.norm = final_norm_.make_gradients();
    if (classifier_) g.classifier = classifier_->make_gradients();
    return g;
  }
  /// The gradients, named as parameters() names the tensors.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const requires TrainableLinear<Lin> {
    const BlockNames names = llama2c_block_names();
    list.add_matrix(prefix + "tok_embeddings.weight", g.embedding, embedding_.rows(), embedding_.cols());
    for (std::size_t l = 0; l < layers_.size(); ++l)
      layers_[l].gradients(list, detail::cat(prefix, "layers.", l, "."), g.layers[l], names);
    final_norm_.gradients(list, prefix + "norm.", g.norm);
    if (classifier_) classifier_->gradients(list, prefix + "output.", g.classifier);
  }

  /// The training forward of `batch` sequences of equal length laid out one after another in tokens
  /// (batch·seq), each from position 0, causal: logits (batch·seq, vocab) of every position, and in `saved` what
  /// backward() needs. For next-token training, the targets are the tokens shifted by one (cross_entropy).
  void forward_train(std::span<const int> tokens, Index batch, MatrixView logits, Saved& saved,
                     const Context& ctx) const requires TrainableLinear<Lin> {
    const char* func = "Llama::forward_train";
    ctx.validate(func);
    const Index rows = static_cast<Index>(tokens.size());
    if (batch < 1 || rows == 0 || rows % batch != 0)
      throw config_error(detail::cat(func, ": ", rows, " tokens for batch ", batch, ", expected a positive multiple"));
    if (rows / batch > config_.seq_len)
      throw config_error(detail::cat(func, ": sequences of ", rows / batch, " tokens pass the model's seq_len ",
                                     config_.seq_len));
    for (Index i = 0; i < rows; ++i)
      if (tokens[std::size_t(i)] < 0 || tokens[std::size_t(i)] >= config_.vocab_size)
        throw config_error(detail::cat(func, ": token ", i, " is ", tokens[std::size_t(i)], ", expected 0..",
                                       config_.vocab_size - 1));
    check_shape(logits, rows, config_.vocab_size, func, "logits");
    const Index d = config_.dim;
    saved.tokens.assign(tokens.begin(), tokens.end());
    saved.batch = batch;
    ensure_shape(saved.x, rows, d);
    ensure_shape(saved.y, rows, d);
    for (Index r = 0; r < rows; ++r) saved.x.row(r) = embedding_.row(tokens[std::size_t(r)]);
    saved.layers.resize(layers_.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      layers_[l].forward_train(cview(saved.x), batch, MaskSpec::causal_mask(), view(saved.y), saved.layers[l], ctx);
      if (l + 1 < layers_.size()) saved.x.swap(saved.y);
    }
    ensure_shape(saved.normed, rows, d);
    final_norm_.forward(cview(saved.y), view(saved.normed));
    if (classifier_) classifier_->forward(cview(saved.normed), logits, ctx);
    else kernels::gemm(cview(saved.normed), cview(embedding_), kernels::Transpose::yes, logits, 1.0f, 0.0f, ctx.threads);
    saved.record();
  }

  /// The backward of forward_train from dlogits (batch·seq, vocab), the loss's gradient of the logits: adds every
  /// tensor's gradient into g. Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView dlogits, Gradients& g, Saved& saved, const Context& ctx) const
    requires TrainableLinear<Lin>
  {
    const char* func = "Llama::backward";
    saved.require_held(func);
    const Index rows = static_cast<Index>(saved.tokens.size()), d = config_.dim;
    check_shape(dlogits, rows, config_.vocab_size, func, "dlogits");
    detail::check_gradient(func, "tok_embeddings", g.embedding, embedding_.rows(), embedding_.cols());
    if (g.layers.size() != layers_.size())
      throw shape_error(detail::cat(func, ": gradients for ", g.layers.size(), " layers, expected ", layers_.size()));
    for (auto& s : saved.layers) s.keep = saved.keep;
    ensure_shape(saved.grad_normed, rows, d);
    ensure_shape(saved.grad, rows, d);
    ensure_shape(saved.grad_buffer, rows, d);
    if (classifier_) {
      classifier_->backward(cview(saved.normed), dlogits, view(saved.grad_normed), g.classifier, ctx);
    } else {  // logits = normed · Eᵀ: d normed = dlogits · E, dE += dlogitsᵀ · normed
      kernels::gemm(dlogits, cview(embedding_), kernels::Transpose::no, view(saved.grad_normed), 1.0f, 0.0f, ctx.threads);
      if (detail::live(g.embedding)) {  // as (normedᵀ · dlogits)ᵀ: the transposes are of (rows, dim) and (dim, vocab),
        const Index vocab = config_.vocab_size;  // not of dlogits (rows, vocab)
        ensure_shape(saved.normed_t, d, rows);
        ensure_shape(saved.embedding_grad_t, d, vocab);
        kernels::transpose(saved.normed.data(), d, rows, d, saved.normed_t.data(), rows);
        kernels::gemm(cview(saved.normed_t), dlogits, kernels::Transpose::no, view(saved.embedding_grad_t), 1.0f, 0.0f,
                      ctx.threads);
        g.embedding.noalias() += saved.embedding_grad_t.transpose();
      }
    }
    final_norm_.backward(cview(saved.y), cview(saved.grad_normed), view(saved.grad), g.norm);
    for (std::size_t k = 0; k < layers_.size(); ++k) {
      const std::size_t l = layers_.size() - 1 - k;
      layers_[l].backward(cview(saved.grad), view(saved.grad_buffer), g.layers[l], saved.layers[l], ctx);
      saved.grad.swap(saved.grad_buffer);
    }
    if (detail::live(g.embedding))  // each token's row of the embedding gets its input row's gradient
      for (Index r = 0; r < rows; ++r) g.embedding.row(saved.tokens[std::size_t(r)]) += saved.grad.row(r);
    saved.take(func);  // released once the whole backward has run
  }

  /// A new sequence's state, for config.seq_len positions.
  State make_state() const {
    State state;
    state.caches.reserve(layers_.size());
    for (const auto& layer : layers_) state.caches.push_back(layer.self_attn().make_state(config_.seq_len));
    return state;
  }

  /// Runs `tokens` at positions state.position() onwards as one batch (a prompt's prefill, or one decoding
  /// step) and returns the logits of the last one, (vocab), held in ws.logits. With `all_logits`, ws.logits
  /// holds every position's logits (n, vocab). Throws config_error for a token id outside the vocabulary or
  /// when the positions would pass config.seq_len; nothing changes then.
  std::span<const float> forward(State& state, std::span<const int> tokens, Workspace& ws, const Context& ctx,
                                 bool all_logits = false) const {
    State* const states[] = {&state};
    const std::span<const int> lists[] = {tokens};
    run("Llama::forward", states, lists, ws, ctx, all_logits);
    return {ws.logits.data() + (ws.logits.rows() - 1) * config_.vocab_size, static_cast<std::size_t>(config_.vocab_size)};
  }

  /// Advances several sequences in one pass: tokens[i] (at least one) continue states[i]. Every weight is read
  /// once for the whole batch. Afterwards ws.logits row i holds the logits of sequence i's last token
  /// (batch, vocab). Throws as forward() does, naming the sequence; nothing changes then.
  const Matrix& forward(std::span<State* const> states, std::span<const std::span<const int>> tokens, Workspace& ws,
                        const Context& ctx) const {
    run("Llama::forward (batch)", states, tokens, ws, ctx, false);
    return ws.logits;
  }

  /// A state and a workspace of one sequence over this model, for callers that run one sequence at a time.
  class Sequence {
   public:
    explicit Sequence(const Llama& model) : model_(&model), state_(model.make_state()) {}
    /// As Llama::forward over this sequence.
    std::span<const float> forward(std::span<const int> tokens, const Context& ctx, bool all_logits = false) {
      return model_->forward(state_, tokens, ws_, ctx, all_logits);
    }
    const io::LlamaConfig& config() const noexcept { return model_->config(); }
    Index position() const noexcept { return state_.position(); }
    void reset() noexcept { state_.clear(); }
    /// Logits of the last forward: (1, vocab), or (n, vocab) after forward(..., all_logits = true).
    const Matrix& logits() const noexcept { return ws_.logits; }
    State& state() noexcept { return state_; }

   private:
    const Llama* model_;
    State state_;
    Workspace ws_;
  };

  /// A new sequence over this model (which must outlive it).
  Sequence new_sequence() const { return Sequence(*this); }

 private:
  void run(const char* func, std::span<State* const> states, std::span<const std::span<const int>> tokens,
           Workspace& ws, const Context& ctx, bool all_logits) const {
    ctx.validate(func);
    if (states.size() != tokens.size() || states.empty())
      throw config_error(detail::cat(func, ": ", states.size(), " states and ", tokens.size(),
                                     " token lists, expected as many, at least 1"));
    Index total = 0;
    for (std::size_t s = 0; s < states.size(); ++s) {
      // Who failed, made only when something does (no allocation on a decoding step).
      const auto where = [&] { return states.size() > 1 ? detail::cat(func, ": sequence ", s) : std::string(func); };
      const Index n = static_cast<Index>(tokens[s].size());
      if (states[s] == nullptr) throw config_error(detail::cat(where(), ": no state"));
      if (states[s]->caches.size() != layers_.size())
        throw config_error(detail::cat(where(), ": the state has ", states[s]->caches.size(), " layers, expected ",
                                       layers_.size(), " (make it with make_state)"));
      if (n < 1) throw config_error(detail::cat(where(), ": no tokens, expected at least 1"));
      const Index position = states[s]->position();
      if (position + n > config_.seq_len)
        throw config_error(detail::cat(where(), ": positions ", position, "..", position + n - 1,
                                       " pass the model's seq_len ", config_.seq_len));
      for (Index i = 0; i < n; ++i)
        if (tokens[s][std::size_t(i)] < 0 || tokens[s][std::size_t(i)] >= config_.vocab_size)
          throw config_error(detail::cat(where(), ": token ", i, " is ", tokens[s][std::size_t(i)], ", expected 0..",
                                         config_.vocab_size - 1));
      for (std::size_t o = 0; o < s; ++o)
        if (states[o] == states[s]) throw config_error(detail::cat(where(), ": the same state as sequence ", o));
      total += n;
    }
    const Index d = config_.dim;
    ensure_shape(ws.x, total, d);  // (rows, dim)
    ensure_shape(ws.y, total, d);
    ws.rows.clear();
    for (std::size_t s = 0, r = 0; s < states.size(); ++s) {
      for (int t : tokens[s]) ws.x.row(Index(r++)) = embedding_.row(t);
      ws.rows.push_back(static_cast<Index>(tokens[s].size()));
    }
    ws.layer_states.resize(states.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      for (std::size_t s = 0; s < states.size(); ++s) ws.layer_states[s] = &states[s]->caches[l];
      layers_[l].forward_cached(cview(ws.x), std::span<typename Attn::State* const>(ws.layer_states),
                                std::span<const Index>(ws.rows), view(ws.y), ws.layer, ctx);
      ws.x.swap(ws.y);
    }
    // Only the rows whose logits are wanted go through the final norm and the classifier.
    ws.wanted.clear();
    if (all_logits) {
      for (Index r = 0; r < total; ++r) ws.wanted.push_back(r);
    } else {
      for (Index s = 0, end = 0; s < Index(ws.rows.size()); ++s) ws.wanted.push_back((end += ws.rows[std::size_t(s)]) - 1);
    }
    const Index wanted = static_cast<Index>(ws.wanted.size());
    ensure_shape(ws.normed, wanted, d);
    if (wanted == total) {
      final_norm_.forward(cview(ws.x), view(ws.normed));
    } else {
      for (Index w = 0; w < wanted; ++w)
        final_norm_.forward(block(cview(ws.x), ws.wanted[std::size_t(w)], 0, 1, d), block(view(ws.normed), w, 0, 1, d));
    }
    ensure_shape(ws.logits, wanted, config_.vocab_size);
    if (classifier_) classifier_->forward(cview(ws.normed), view(ws.logits), ctx);
    else tied_logits(cview(ws.normed), view(ws.logits), ctx);
  }

  /// logits (m, vocab) = x (m, dim) · Eᵀ over the embedding E (vocab, dim) itself, by dot products over blocks of
  /// E's rows, each block read once from memory for all of x (kernels/gemm_nt.hpp); m > 16 through the GEMM
  /// entry point.
  void tied_logits(ConstMatrixView x, MatrixView logits, const Context& ctx) const {
    const Index m = x.rows(), vocab = config_.vocab_size, d = config_.dim;
    if (m > 16) {
      kernels::gemm(x, cview(embedding_), kernels::Transpose::yes, logits, 1.0f, 0.0f, ctx.threads);
      return;
    }
    constexpr Index block_rows = 256;  // rows of E per task
    const Index blocks = (vocab + block_rows - 1) / block_rows;
    const int t = static_cast<double>(m * vocab * d) < 1e6 ? 1 : static_cast<int>(std::min<Index>(ctx.threads, blocks));
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    parallel_chunks(blocks, t, [&](Index b0, Index b1, int) {
      for (Index b = b0; b < b1; ++b) {  // a block stays in L2 while every group of 4 rows of x passes over it
        const Index j0 = b * block_rows, rows = std::min(block_rows, vocab - j0);
        kernels::gemm_nt(u(m), u(rows), u(d), x.data(), u(x.outerStride()), embedding_.data() + j0 * d, u(d),
                         logits.data() + j0, u(logits.outerStride()));
      }
    });
  }

  io::LlamaConfig config_{};
  Matrix embedding_;  // (vocab, dim)
  std::vector<Layer> layers_;
  RMSNorm final_norm_{};
  std::optional<Lin> classifier_;  // none: tied to the embedding
};

/// A Llama of the sizes in `config` with zero weights (unit norm gains), to be filled by name through
/// parameters() and load_state_dict (io/state_dict.hpp), e.g. from a safetensors export or a llama2.c file.
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> make_llama(const io::LlamaConfig& c, const Attn& attention = Attn{}) {
  using Model = Llama<Attn, Lin>;
  using Layer = typename Model::Layer;
  c.validate("make_llama");
  const Index d = c.dim, h = c.hidden_dim, q = c.n_heads * c.head_dim(), kv = c.kv_dim();
  const auto zero = [](Index out, Index in) { return Lin(Matrix(Matrix::Zero(out, in))); };
  std::vector<Layer> layers;
  layers.reserve(static_cast<std::size_t>(c.n_layers));
  for (Index l = 0; l < c.n_layers; ++l) {
    typename Layer::SelfAttention attn(zero(q, d), zero(kv, d), zero(kv, d), zero(d, q),
                                       HeadConfig{c.n_heads, c.n_kv_heads, c.head_dim()}, attention,
                                       RoPE<RotaryStyle::interleaved>(c.rope_theta));
    typename Layer::FFN ffn(zero(h, d), zero(h, d), zero(d, h));
    layers.emplace_back(std::move(attn), std::move(ffn), RMSNorm(d, c.norm_eps), RMSNorm(d, c.norm_eps));
  }
  std::optional<Lin> classifier;
  if (!c.shared_classifier || !exact_float_weights<Lin>) classifier.emplace(zero(c.vocab_size, d));
  return Model(c, Matrix::Zero(c.vocab_size, d), std::move(layers), RMSNorm(d, c.norm_eps), std::move(classifier));
}

/// llama2.c model.py's names for the tensors of a parsed checkpoint (borrowed: `w` must outlive the result):
/// the mapping from the llama2.c layout to the names Llama::parameters() lists.
inline TensorRefs llama2c_tensors(const io::LlamaWeights& w) {
  TensorRefs t;
  const auto matrix = [&](const std::string& name, const Matrix& m) {
    t[name] = TensorRef{{m.rows(), m.cols()}, m.data()};
  };
  const auto vector = [&](const std::string& name, const Vector& v) { t[name] = TensorRef{{v.size()}, v.data()}; };
  matrix("tok_embeddings.weight", w.token_embedding);
  for (std::size_t l = 0; l < w.wq.size(); ++l) {
    const std::string layer = detail::cat("layers.", l, ".");
    matrix(layer + "attention.wq.weight", w.wq[l]);
    matrix(layer + "attention.wk.weight", w.wk[l]);
    matrix(layer + "attention.wv.weight", w.wv[l]);
    matrix(layer + "attention.wo.weight", w.wo[l]);
    matrix(layer + "feed_forward.w1.weight", w.w1[l]);
    matrix(layer + "feed_forward.w2.weight", w.w2[l]);
    matrix(layer + "feed_forward.w3.weight", w.w3[l]);
    vector(layer + "attention_norm.weight", w.attn_norm[l]);
    vector(layer + "ffn_norm.weight", w.ffn_norm[l]);
  }
  vector("norm.weight", w.final_norm);
  if (!w.config.shared_classifier) matrix("output.weight", w.classifier);
  return t;
}

/// A Llama over the float weights of a parsed llama2.c checkpoint: a model of its sizes filled through its
/// model.py names (llama2c_tensors, load_state_dict), every layer's attention a copy of `attention`
/// (FullAttention by default; any IncrementalAttention policy, e.g. SlidingWindow for a bounded cache) and every
/// linear layer a `Lin`: Dense packs the weight, Int8 quantizes it, LoRA<Inner> wraps it with no adapters yet.
/// A shared (tied) classifier reads the embedding itself when `Lin` computes with exact float weights (Dense,
/// LoRA<Dense>); otherwise it is a `Lin` of its own (Int8).
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> make_llama(const io::LlamaWeights& w, const Attn& attention = Attn{}) {
  auto model = make_llama<Lin>(w.config, attention);
  TensorRefs tensors = llama2c_tensors(w);
  if (w.config.shared_classifier && model.classifier() != nullptr)  // a tied classifier of its own: the embedding
    tensors["output.weight"] = tensors.at("tok_embeddings.weight");
  load_state_dict(parameters_of(model), tensors);
  return model;
}

/// Reads a llama2.c checkpoint (legacy, version 1 or 2) into a Llama over linear policy `Lin` and attention
/// policy `attention`: `load_llama2c(path)`, `load_llama2c<Int8>(path)`, `load_llama2c(path, SlidingWindow(64))`.
/// Float tensors go from the file's mapping straight into the model's layers (no float copy of the checkpoint on
/// the way); version-2 (Q8_0) matrices are dequantized one at a time.
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> load_llama2c(const std::string& path, const Attn& attention = Attn{}) {
  const io::detail::ByteBuffer file = io::detail::map_file(path, "llama2c");
  const std::span<const unsigned char> bytes(file.data(), file.size());
  const io::Llama2cLayout layout = io::llama2c_layout(bytes, path);
  auto model = make_llama<Lin>(layout.config, attention);
  TensorRefs tensors;
  std::vector<std::vector<float>> converted;  // the tensors not stored as this machine's floats
  converted.reserve(layout.tensors.size());
  for (const io::Llama2cTensor& t : layout.tensors) {
    const float* data = io::llama2c_tensor_in_place(bytes, layout, t);
    if (data == nullptr) {
      converted.emplace_back(static_cast<std::size_t>(t.rows * t.cols));
      io::read_llama2c_tensor(bytes, layout, t, converted.back().data());
      data = converted.back().data();
    }
    std::vector<std::int64_t> shape = t.is_vector() ? std::vector<std::int64_t>{t.cols} : std::vector<std::int64_t>{t.rows, t.cols};
    tensors[io::llama2c_name(t)] = TensorRef{std::move(shape), data};
  }
  if (layout.config.shared_classifier && model.classifier() != nullptr)  // a tied classifier of its own
    tensors["output.weight"] = tensors.at("tok_embeddings.weight");
  load_state_dict(parameters_of(model), tensors);
  return model;
}

}  // namespace polyformer
