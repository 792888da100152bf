#pragma once
/// \file A decoder-only language model composed from polyformer's policies, written once for every architecture
/// of the kind: token embedding (plus a learned position table, GPT-2) → pre-norm decoder layers without
/// cross-attention, decoding over a KV cache per sequence → final norm → classifier (or the embedding itself,
/// tied). An architecture (models/llama.hpp, models/gpt2.hpp) names its layer, its tensors and its checks.

#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/block_names.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/kernels/gemm_nt.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/transpose.hpp"

namespace polyformer {

/// How a CausalLM's tensors are named: "<embedding>", "<positions>", "<layers><i>." + the block's names,
/// "<final_norm>" + the norm's, "<classifier>" + the linear layer's.
struct CausalLMNames {
  std::string embedding, positions, layers, final_norm, classifier;
  BlockNames block;
};

/// A decoder-only language model of architecture `Arch` (LlamaArchitecture, Gpt2Architecture: its layer, whether a
/// learned position table is added to the embeddings, its tensors' names) over attention policy `Attn` and linear
/// policy `Lin`. The model holds weights only and is used through `const`: one loaded model serves any number of
/// sequences from any number of threads. What a sequence carries (a KV cache per layer, sized for config.seq_len
/// positions when made, so decoding allocates nothing per token) is its State; a call's scratch is a Workspace (one
/// per thread). Sequence bundles the two for the common one-sequence case.
template <typename Arch, IncrementalAttention Attn, LinearPolicy Lin>
class CausalLM {
 public:
  using architecture = Arch;
  using Layer = typename Arch::template Layer<Attn, Lin>;
  using Norm = typename Layer::norm_type;  ///< the final norm's type, the layers' own
  static constexpr bool learned_positions = Arch::learned_positions;

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
  /// position table's (learned positions only), the layers', the final norm's and an untied classifier's.
  struct Gradients {
    Matrix embedding;
    Matrix positions;  ///< (seq_len, dim), learned positions only
    std::vector<typename Layer::Gradients> layers;
    typename Norm::Gradients norm{};
    typename Lin::Gradients classifier{};  ///< untied only
  };

  CausalLM() = default;

  /// embedding (vocab, dim); layers; final norm; classifier dim → vocab, or none for a classifier tied to the
  /// embedding, which then computes the logits from the embedding itself (no second copy of it); with learned
  /// positions, the position table (seq_len, dim) added to the embeddings.
  CausalLM(io::LlamaConfig config, Matrix embedding, std::vector<Layer> layers, Norm final_norm,
           std::optional<Lin> classifier, Matrix positions = {})
      : config_(config), embedding_(std::move(embedding)), positions_(std::move(positions)), layers_(std::move(layers)),
        final_norm_(std::move(final_norm)), classifier_(std::move(classifier)) {
    Arch::validate(config_, Arch::name);
    check_shape(embedding_, config_.vocab_size, config_.dim, Arch::name, "embedding");
    if constexpr (learned_positions) check_shape(positions_, config_.seq_len, config_.dim, Arch::name, "positions");
    else check_shape(positions_, 0, 0, Arch::name, "positions (the architecture has none)");
    if (static_cast<Index>(layers_.size()) != config_.n_layers)
      throw config_error(detail::cat(Arch::name, ": ", layers_.size(), " layers, expected n_layers ", config_.n_layers));
    for (std::size_t l = 0; l < layers_.size(); ++l)
      if (layers_[l].d_model() != config_.dim)
        throw shape_error(detail::cat(Arch::name, ": layer ", l, " has d_model ", layers_[l].d_model(), ", expected ", config_.dim));
    if (final_norm_.dim() != config_.dim)
      throw shape_error(detail::cat(Arch::name, ": final norm has dim ", final_norm_.dim(), ", expected ", config_.dim));
    if (classifier_ && (classifier_->in_features() != config_.dim || classifier_->out_features() != config_.vocab_size))
      throw shape_error(detail::cat(Arch::name, ": classifier maps ", classifier_->in_features(), " -> ",
                                    classifier_->out_features(), ", expected ", config_.dim, " -> ", config_.vocab_size));
    for (auto& layer : layers_) layer.self_attn().reserve_positions(config_.seq_len);
  }

  const io::LlamaConfig& config() const noexcept { return config_; }
  // Mutable access is for setting the model up (adapters, quantization); forward never needs it.
  std::vector<Layer>& layers() noexcept { return layers_; }
  const std::vector<Layer>& layers() const noexcept { return layers_; }
  const Matrix& embedding() const noexcept { return embedding_; }
  /// The learned position table (seq_len, dim); empty without learned positions.
  const Matrix& positions() const noexcept { return positions_; }
  /// The classifier, or nullptr when it is tied to the embedding.
  Lin* classifier() noexcept { return classifier_ ? &*classifier_ : nullptr; }
  const Lin* classifier() const noexcept { return classifier_ ? &*classifier_ : nullptr; }
  const Norm& final_norm() const noexcept { return final_norm_; }

  /// Every tensor by the architecture's names (Arch::names()) under `prefix`: the embedding, the position table
  /// (learned positions), every layer's, the final norm's and, unless tied to the embedding, the classifier's.
  void parameters(ParameterList& list, const std::string& prefix) {
    const CausalLMNames n = Arch::names();
    list.add_matrix(prefix + n.embedding, embedding_);
    if constexpr (learned_positions) list.add_matrix(prefix + n.positions, positions_);
    for (std::size_t l = 0; l < layers_.size(); ++l)
      layers_[l].parameters(list, detail::cat(prefix, n.layers, l, "."), n.block);
    final_norm_.parameters(list, prefix + n.final_norm);
    if (classifier_) classifier_->parameters(list, prefix + n.classifier);
  }

  Gradients make_gradients() const requires TrainableLinear<Lin> {
    Gradients g;
    g.embedding = Matrix::Zero(embedding_.rows(), embedding_.cols());
    if constexpr (learned_positions) g.positions = Matrix::Zero(positions_.rows(), positions_.cols());
    for (const Layer& layer : layers_) g.layers.push_back(layer.make_gradients());
    g.norm = final_norm_.make_gradients();
    if (classifier_) g.classifier = classifier_->make_gradients();
    return g;
  }
  /// The gradients, named as parameters() names the tensors.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const requires TrainableLinear<Lin> {
    const CausalLMNames n = Arch::names();
    list.add_matrix(prefix + n.embedding, g.embedding, embedding_.rows(), embedding_.cols());
    if constexpr (learned_positions)
      list.add_matrix(prefix + n.positions, g.positions, positions_.rows(), positions_.cols());
    for (std::size_t l = 0; l < layers_.size(); ++l)
      layers_[l].gradients(list, detail::cat(prefix, n.layers, l, "."), g.layers[l], n.block);
    final_norm_.gradients(list, prefix + n.final_norm, g.norm);
    if (classifier_) classifier_->gradients(list, prefix + n.classifier, g.classifier);
  }

  /// The training forward of `batch` sequences of equal length laid out one after another in tokens
  /// (batch·seq), each from position 0, causal: logits (batch·seq, vocab) of every position, and in `saved` what
  /// backward() needs. For next-token training, the targets are the tokens shifted by one (cross_entropy).
  void forward_train(std::span<const int> tokens, Index batch, MatrixView logits, Saved& saved,
                     const Context& ctx) const requires TrainableLinear<Lin> {
    const char* func = Arch::forward_train_name;
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
    if constexpr (learned_positions)
      for (Index r = 0, seq = rows / batch; r < rows; ++r) saved.x.row(r) += positions_.row(r % seq);
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
    const char* func = Arch::backward_name;
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
    if constexpr (learned_positions) {
      detail::check_gradient(func, "positions", g.positions, positions_.rows(), positions_.cols());
      if (detail::live(g.positions))  // and each position's row, summed over the batch
        for (Index r = 0, seq = rows / saved.batch; r < rows; ++r) g.positions.row(r % seq) += saved.grad.row(r);
    }
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
    run(Arch::forward_name, states, lists, ws, ctx, all_logits);
    return {ws.logits.data() + (ws.logits.rows() - 1) * config_.vocab_size, static_cast<std::size_t>(config_.vocab_size)};
  }

  /// Advances several sequences in one pass: tokens[i] (at least one) continue states[i]. Every weight is read
  /// once for the whole batch. Afterwards ws.logits row i holds the logits of sequence i's last token
  /// (batch, vocab). Throws as forward() does, naming the sequence; nothing changes then.
  const Matrix& forward(std::span<State* const> states, std::span<const std::span<const int>> tokens, Workspace& ws,
                        const Context& ctx) const {
    run(Arch::forward_batch_name, states, tokens, ws, ctx, false);
    return ws.logits;
  }

  /// A state and a workspace of one sequence over this model, for callers that run one sequence at a time.
  class Sequence {
   public:
    explicit Sequence(const CausalLM& model) : model_(&model), state_(model.make_state()) {}
    /// As CausalLM::forward over this sequence.
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
    const CausalLM* model_;
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
      const Index first = states[s]->position();
      for (std::size_t i = 0; i < tokens[s].size(); ++i, ++r) {
        ws.x.row(Index(r)) = embedding_.row(tokens[s][i]);
        if constexpr (learned_positions) ws.x.row(Index(r)) += positions_.row(first + Index(i));
      }
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
  Matrix positions_;  // (seq_len, dim), learned positions only
  std::vector<Layer> layers_;
  Norm final_norm_{};
  std::optional<Lin> classifier_;  // none: tied to the embedding
};

}  // namespace polyformer
