#pragma once
/// \file One decoding step of a small Llama run by a team of threads that stays together for the whole step.
///
/// Llama::forward splits each product of a step over the threads and joins them again: about 40 fork-joins a
/// token, each a cross-core hand-off of a few hundred nanoseconds. When the products take a microsecond or so
/// (stories260K's layers are 64 wide) the hand-offs cost more than the split saves, so there every product runs on
/// one thread. Here each member of a team (run_team, core/parallel.hpp) owns a fixed share of every layer — a
/// range of kv heads with the query heads that read them, a range of the model's features (the output projection's
/// and the FFN's outputs, added to the residual stream), a range of the FFN's hidden units, a range of the
/// vocabulary — packed apart when the decoder is made, so that a member's share stays in its own core's cache
/// from one token to the next; the members meet at four barriers a layer.
///
/// Each member computes its share with the kernels Llama::forward uses, over the same values in the same order,
/// so the logits equal Llama::forward's bit for bit (tests/test_models_llama_team_decoder.cpp).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <exception>
#include <span>
#include <string>
#include <vector>

#include "polyformer/attention/dynamic_attention.hpp"
#include "polyformer/attention/full.hpp"
#include "polyformer/attention/kv_cache.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/cached_attention.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/gemm_nt.hpp"
#include "polyformer/kernels/norm.hpp"
#include "polyformer/kernels/packed_gemm.hpp"
#include "polyformer/kernels/weight_allocator.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/linear/lora.hpp"
#include "polyformer/models/llama.hpp"

namespace polyformer {

namespace detail {

/// The Dense that a linear layer computes exactly — a Dense itself, or a LoRA over one whose adapters are merged
/// into it or inactive — or nullptr.
template <typename Lin>
const Dense* exact_dense(const Lin& lin) noexcept {
  if constexpr (std::same_as<Lin, Dense>) {
    return &lin;
  } else if constexpr (std::same_as<Lin, LoRA<Dense>>) {
    if (lin.merged()) return &lin.inner();
    for (const LoRAAdapter& a : lin.adapters())
      if (a.active) return nullptr;
    return &lin.inner();
  } else {
    return nullptr;
  }
}

/// The KV cache of a layer's state when its attention is FullAttention (or a DynamicAttention holding one), else
/// nullptr.
template <typename Attn>
KVCache* full_attention_cache(const Attn& attention, typename Attn::State& state) noexcept {
  if constexpr (std::same_as<Attn, FullAttention>) {
    (void)attention;
    return &state;
  } else if constexpr (requires { attention.template state_if<FullAttention>(state); }) {
    return attention.template state_if<FullAttention>(state);
  } else {
    return nullptr;
  }
}

/// Whether attention `attention` is FullAttention or a DynamicAttention holding one.
template <typename Attn>
bool is_full_attention(const Attn& attention) noexcept {
  if constexpr (std::same_as<Attn, FullAttention>) {
    (void)attention;
    return true;
  } else if constexpr (requires { attention.template held_if<FullAttention>(); }) {
    return attention.template held_if<FullAttention>() != nullptr;
  } else {
    return false;
  }
}

}  // namespace detail

/// Decodes one token at a time of a Llama<Attn, Lin> with a team of `team` threads (see the file comment). The
/// model must outlive the decoder, and keep its weights while it is used (the decoder holds packed copies of
/// them: a change to the model's weights is not seen). One decoder serves one caller at a time.
template <IncrementalAttention Attn, LinearPolicy Lin>
class LlamaTeamDecoder {
 public:
  using Model = Llama<Attn, Lin>;
  using State = typename Model::State;

  /// Why a team of `team` cannot decode `model`, or "" when it can: every linear layer must compute a Dense
  /// exactly (fp32; LoRA adapters merged or inactive), without bias, and every layer's attention be full.
  static std::string unsupported(const Model& model, int team) {
    if (team < 1) return detail::cat("team is ", team, ", expected >= 1");
    const auto dense = [](const Lin& lin) {
      const Dense* d = detail::exact_dense(lin);
      return d != nullptr && !d->has_bias();
    };
    for (std::size_t l = 0; l < model.layers().size(); ++l) {
      const auto& layer = model.layers()[l];
      const auto& attn = layer.self_attn();
      const auto& ffn = layer.ffn();
      for (const Lin* lin : {&attn.q_proj(), &attn.k_proj(), &attn.v_proj(), &attn.o_proj(), &ffn.gate(), &ffn.up(),
                             &ffn.down()})
        if (!dense(*lin))
          return detail::cat("layer ", l, " has a linear layer that is not an fp32 Dense without bias (or LoRA adapters",
                             " are active and unmerged)");
      if (!detail::is_full_attention(attn.attention()))
        return detail::cat("layer ", l, "'s attention is not full attention");
    }
    if (model.classifier() != nullptr && !dense(*model.classifier()))
      return "the classifier is not an fp32 Dense without bias";
    return "";
  }

  /// Whether a team of `team` (>= 2) is worth it for `model`: it can decode it, and Llama::forward would decode it
  /// on one thread, every product of a layer being too short to split (packed_split_min_flops): stories260K, not
  /// the 110M model, whose products split well over threads and whose weights a team would hold twice.
  static bool worthwhile(const Model& model, int team) {
    if (team < 2 || !unsupported(model, team).empty()) return false;
    const io::LlamaConfig& c = model.config();
    const double widest = double(std::max({c.dim, c.n_heads * c.head_dim(), c.hidden_dim}));
    return 2.0 * double(c.dim) * widest < kernels::packed_split_min_flops;
  }

  /// Packs each member's share of `model`'s weights. Throws config_error when unsupported() names a reason.
  LlamaTeamDecoder(const Model& model, int team) : model_(&model), team_(team), barrier_(std::max(team, 1)) {
    if (const std::string why = unsupported(model, team); !why.empty())
      throw config_error(detail::cat("LlamaTeamDecoder: ", why));
    const io::LlamaConfig& c = model.config();
    x_.assign(std::size_t(c.dim), 0.0f);
    context_.assign(std::size_t(c.n_heads * c.head_dim()), 0.0f);
    hidden_.assign(std::size_t(c.hidden_dim), 0.0f);
    logits_.assign(std::size_t(c.vocab_size), 0.0f);
    members_.resize(std::size_t(team));
    // Each member packs its own share, on its own thread when a team can run: the packing is split, and each
    // share is first touched by the core that will read it.
    std::vector<std::exception_ptr> failed(static_cast<std::size_t>(team));
    auto build = [&](int m) {
      try {
        build_member(m);
      } catch (...) {
        failed[std::size_t(m)] = std::current_exception();
      }
    };
    if (!run_team(team, build))
      for (int m = 0; m < team; ++m) build(m);
    for (const std::exception_ptr& e : failed)
      if (e) std::rethrow_exception(e);
    caches_.resize(model.layers().size());
  }

  LlamaTeamDecoder(const LlamaTeamDecoder&) = delete;
  LlamaTeamDecoder& operator=(const LlamaTeamDecoder&) = delete;

  int team() const noexcept { return team_; }

  /// Runs `token` at state.position() — one decoding step — and returns its logits (vocab), held until the next
  /// call: what model.forward(state, {token}, …) returns. `state` is one of the model's (make_state). Throws
  /// config_error as Llama::forward does (a bad token, no position left, a state of another model or policy);
  /// nothing changes then. Called from inside a parallel region, where a team cannot be promised, the step runs
  /// through Llama::forward instead (the same logits).
  std::span<const float> forward(State& state, int token) {
    const char* func = "LlamaTeamDecoder::forward";
    const Model& model = *model_;
    const io::LlamaConfig& c = model.config();
    if (state.caches.size() != model.layers().size())
      throw config_error(detail::cat(func, ": the state has ", state.caches.size(), " layers, expected ",
                                     model.layers().size(), " (make it with make_state)"));
    if (token < 0 || token >= c.vocab_size)
      throw config_error(detail::cat(func, ": token is ", token, ", expected 0..", c.vocab_size - 1));
    const Index position = state.position();
    if (position + 1 > c.seq_len)
      throw config_error(detail::cat(func, ": position ", position, " passes the model's seq_len ", c.seq_len));
    for (std::size_t l = 0; l < model.layers().size(); ++l) {
      KVCache* cache = detail::full_attention_cache(model.layers()[l].self_attn().attention(), state.caches[l]);
      if (cache == nullptr || cache->size() != position || cache->capacity() < position + 1)
        throw config_error(detail::cat(func, ": layer ", l, "'s state is not a full-attention cache at position ",
                                       position, " with room for one more"));
      caches_[l] = cache;
    }
    std::copy_n(model.embedding().data() + Index(token) * c.dim, c.dim, x_.data());
    position_ = position;
    if (!run_team(team_, [&](int member) { run_member(member); })) {
      const int tokens[] = {token};
      return model.forward(state, std::span<const int>(tokens), fallback_, Context{team_});
    }
    for (KVCache* cache : caches_) cache->commit(1);
    return {logits_.data(), logits_.size()};
  }

 private:
  /// One member's packed share of one layer's weights: Wᵀ of the rows it computes, the products that read the same
  /// input side by side (its query, key and value rows; its gate and up rows).
  struct Weights {
    kernels::PackedMatrix qkv, o, gate_up, down;
  };

  /// One member: its ranges, its weights, its scratch.
  struct Member {
    Index kv0 = 0, kv1 = 0;  // kv heads [kv0, kv1), and the query heads that read them
    Index d0 = 0, d1 = 0;    // features of the residual stream [d0, d1): the rows of o_proj and down
    Index h0 = 0, h1 = 0;    // hidden units [h0, h1): the rows of gate and up
    Index v0 = 0, v1 = 0;    // the vocabulary's [v0, v1): the classifier's rows
    std::vector<Weights> layers;
    kernels::PackedMatrix classifier;  // untied classifier's rows (empty when tied to the embedding)
    std::vector<float> normed, qkv, out, gate_up, scores;  // (dim), (q | k | v), (d1 − d0), (gate | up), scores
  };

  /// Packs member m's share of every weight and sizes its scratch.
  void build_member(int m) {
    const Model& model = *model_;
    const io::LlamaConfig& c = model.config();
    const int team = team_;
    const Index dh = c.head_dim(), group = c.n_heads / c.n_kv_heads;
    Member& me = members_[std::size_t(m)];
    me.kv0 = c.n_kv_heads * m / team;
    me.kv1 = c.n_kv_heads * (m + 1) / team;
    me.d0 = share(c.dim, team, m);
    me.d1 = share(c.dim, team, m + 1);
    me.h0 = share(c.hidden_dim, team, m);
    me.h1 = share(c.hidden_dim, team, m + 1);
    me.v0 = share(c.vocab_size, team, m);
    me.v1 = share(c.vocab_size, team, m + 1);
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    const std::size_t q0 = u(me.kv0 * group * dh), q1 = u(me.kv1 * group * dh), k0 = u(me.kv0 * dh),
                      k1 = u(me.kv1 * dh), d0 = u(me.d0), d1 = u(me.d1), h0 = u(me.h0), h1 = u(me.h1);
    using Columns = kernels::PackedMatrix::Columns;
    for (const auto& layer : model.layers()) {
      const auto& attn = layer.self_attn();
      const auto& ffn = layer.ffn();
      Weights w;
      w.qkv = kernels::PackedMatrix::gather_columns(
          {Columns{&packed(attn.q_proj()), q0, q1}, Columns{&packed(attn.k_proj()), k0, k1},
           Columns{&packed(attn.v_proj()), k0, k1}});
      w.o = kernels::PackedMatrix::gather_columns({Columns{&packed(attn.o_proj()), d0, d1}});
      w.gate_up = kernels::PackedMatrix::gather_columns(
          {Columns{&packed(ffn.gate()), h0, h1}, Columns{&packed(ffn.up()), h0, h1}});
      w.down = kernels::PackedMatrix::gather_columns({Columns{&packed(ffn.down()), d0, d1}});
      me.layers.push_back(std::move(w));
    }
    if (model.classifier() != nullptr)
      me.classifier = kernels::PackedMatrix::gather_columns({Columns{&packed(*model.classifier()), u(me.v0), u(me.v1)}});
    me.normed.assign(std::size_t(c.dim), 0.0f);
    me.qkv.assign(q1 - q0 + 2 * (k1 - k0), 0.0f);
    me.out.assign(d1 - d0, 0.0f);
    me.gate_up.assign(2 * (h1 - h0), 0.0f);
    me.scores.assign(std::size_t(group * c.seq_len), 0.0f);
  }

  /// Member m's first index of n split among `team` (a multiple of 16 floats — a cache line — except at n, so two
  /// members never write the same line of a shared vector).
  static Index share(Index n, int team, int m) {
    constexpr Index grain = 16;
    if (m >= team) return n;
    const Index even = n * m / team;
    return std::min(n, (even + grain / 2) / grain * grain);
  }

  /// A linear layer's packed weight Wᵀ (in, out): a member's share of it is a run of its columns.
  static const kernels::PackedMatrix& packed(const Lin& lin) { return detail::exact_dense(lin)->packed_weight(); }

  /// y (1, n) = x (1, k) · W for a packed share, on this thread.
  static void product(const float* x, Index k, const kernels::PackedMatrix& w, float* y) {
    if (w.cols() == 0) return;
    kernels::gemm(ConstMatrixView(x, 1, k, Eigen::OuterStride<>(k)), w,
                  MatrixView(y, 1, static_cast<Index>(w.cols()), Eigen::OuterStride<>(static_cast<Index>(w.cols()))));
  }

  /// Member m's part of the step: its share of every layer, then its share of the logits.
  void run_member(int m) {
    const Model& model = *model_;
    const io::LlamaConfig& c = model.config();
    Member& me = members_[std::size_t(m)];
    const Index d = c.dim, dh = c.head_dim(), group = c.n_heads / c.n_kv_heads, n_keys = position_ + 1;
    const Index own_kv = me.kv1 - me.kv0, q_width = own_kv * group * dh, kv_width = own_kv * dh;
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    for (std::size_t l = 0; l < model.layers().size(); ++l) {
      const auto& layer = model.layers()[l];
      const auto& attn = layer.self_attn();
      const Weights& w = me.layers[l];
      KVCache& cache = *caches_[l];
      // Attention: this member's kv heads and the query heads that read them.
      kernels::rms_norm(x_.data(), me.normed.data(), layer.norm1().gamma().data(), u(d), layer.norm1().eps());
      if (own_kv > 0) {
        product(me.normed.data(), d, w.qkv, me.qkv.data());
        float* const q = me.qkv.data();
        float* const k = q + q_width;
        const float* const v = k + kv_width;
        attn.rotary().apply(q, 1, q_width, own_kv * group, dh, position_);
        attn.rotary().apply(k, 1, kv_width, own_kv, dh, position_);
        cache.write_heads(me.kv0, me.kv1, k, v);
        for (Index g = me.kv0; g < me.kv1; ++g) {
          const ConstMatrixView kt = cache.keys_t(g, n_keys), vt = cache.values_t(g, n_keys);
          kernels::attend_transposed(u(group), u(dh), u(n_keys), attn.shape().scale, q + (g - me.kv0) * group * dh,
                                     u(dh), kt.data(), vt.data(), u(kt.outerStride()), me.scores.data(), u(c.seq_len),
                                     context_.data() + g * group * dh, u(dh));
        }
      }
      barrier_.arrive_and_wait();  // every head's context is in
      product(context_.data(), c.n_heads * dh, w.o, me.out.data());
      for (Index i = me.d0; i < me.d1; ++i) x_[u(i)] = x_[u(i)] + me.out[u(i - me.d0)];
      barrier_.arrive_and_wait();  // the residual stream is whole again
      // FFN: this member's hidden units, then its features of the output.
      kernels::rms_norm(x_.data(), me.normed.data(), layer.norm2().gamma().data(), u(d), layer.norm2().eps());
      product(me.normed.data(), d, w.gate_up, me.gate_up.data());
      const Index own_hidden = me.h1 - me.h0;
      kernels::swiglu(me.gate_up.data(), me.gate_up.data() + own_hidden, hidden_.data() + me.h0, u(own_hidden));
      barrier_.arrive_and_wait();  // every hidden unit is in
      product(hidden_.data(), c.hidden_dim, w.down, me.out.data());
      for (Index i = me.d0; i < me.d1; ++i) x_[u(i)] = x_[u(i)] + me.out[u(i - me.d0)];
      barrier_.arrive_and_wait();
    }
    kernels::rms_norm(x_.data(), me.normed.data(), model.final_norm().gamma().data(), u(d), model.final_norm().eps());
    if (model.classifier() != nullptr) {
      product(me.normed.data(), d, me.classifier, logits_.data() + me.v0);
    } else if (me.v1 > me.v0) {
      kernels::gemm_nt(1, u(me.v1 - me.v0), u(d), me.normed.data(), u(d), model.embedding().data() + me.v0 * d, u(d),
                       logits_.data() + me.v0, u(c.vocab_size));
    }
  }

  const Model* model_;
  int team_;
  SpinBarrier barrier_;
  std::vector<Member> members_;
  // Shared: (dim), (heads·head_dim), (hidden_dim), (vocab); 64-byte aligned, so members' 16-float shares of them
  // fall on separate cache lines.
  std::vector<float, kernels::WeightAllocator<float>> x_, context_, hidden_, logits_;
  std::vector<KVCache*> caches_;                        // the step's layers' caches
  Index position_ = 0;                                  // the step's position
  typename Model::Workspace fallback_;
};

/// One sequence of a Llama whose decoding steps (one token) a team runs (LlamaTeamDecoder) and whose prompt
/// (several tokens at once) Llama::forward runs: a sequence generate() takes, as Llama::Sequence.
template <IncrementalAttention Attn, LinearPolicy Lin>
class LlamaTeamSequence {
 public:
  using Model = Llama<Attn, Lin>;
  /// Throws config_error when a team of `team` cannot decode `model` (LlamaTeamDecoder::unsupported).
  LlamaTeamSequence(const Model& model, int team) : sequence_(model.new_sequence()), decoder_(model, team) {}

  /// As Llama::Sequence::forward; one token without all_logits goes through the team.
  std::span<const float> forward(std::span<const int> tokens, const Context& ctx, bool all_logits = false) {
    if (tokens.size() == 1 && !all_logits) return decoder_.forward(sequence_.state(), tokens[0]);
    return sequence_.forward(tokens, ctx, all_logits);
  }
  const io::LlamaConfig& config() const noexcept { return sequence_.config(); }
  Index position() const noexcept { return sequence_.position(); }
  void reset() noexcept { sequence_.reset(); }

 private:
  typename Model::Sequence sequence_;
  LlamaTeamDecoder<Attn, Lin> decoder_;
};

}  // namespace polyformer
