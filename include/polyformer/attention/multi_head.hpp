#pragma once
/// \file Multi-head (and grouped-query) attention over any attention policy (Vaswani et al. 2017, §3.2.2):
/// Q/K/V projections (linear policies), optional rotary positions, the policy's score/softmax/value
/// part per sequence, and the output projection.

#include <cmath>
#include <span>
#include <string>
#include <vector>
#include <utility>

#include "polyformer/attention/mask.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/rotary.hpp"

namespace polyformer {

/// Head counts of a multi-head attention module.
struct HeadConfig {
  Index n_heads = 1;
  Index n_kv_heads = 0;  ///< 0 means n_heads (no grouping)
  Index head_dim = 0;    ///< 0 means d_model / n_heads
};

/// How a multi-head attention module's tensors are named in a checkpoint: separate projections (q, k, v, o
/// prefixes), or PyTorch nn.MultiheadAttention's fused "in_proj_weight" (3·d, d) / "in_proj_bias" (3·d) holding
/// q, k and v as row blocks, with "out_proj.*". torch_names() and llama2c_names() give the two in use.
struct AttentionNames {
  std::string q = "q_proj.", k = "k_proj.", v = "v_proj.", o = "out_proj.";
  bool fused_in_proj = false;
  std::string policy = "policy.";  ///< prefix of the attention policy's own parameters (Linformer's E, F)
};

namespace detail {
/// A policy's gradients inside MultiHeadAttention::Gradients: its own for a ParametrizedAttention, else nothing.
struct NoPolicyGradients {};
template <typename Attn>
struct PolicyGradientsOf {
  using type = NoPolicyGradients;
};
template <ParametrizedAttention Attn>
struct PolicyGradientsOf<Attn> {
  using type = typename Attn::Gradients;
};
template <typename Attn>
using PolicyGradients = typename PolicyGradientsOf<Attn>::type;
}  // namespace detail

/// Projections around an attention policy. Inputs are batches laid out as (batch·seq, d_model) rows.
/// The module holds weights only and is used through `const`; a call's projections and the policy's scratch
/// live in the caller's Workspace, and a decoding sequence's keys and values in its State.
template <AttentionPolicy Attn, LinearPolicy Lin, RotaryPolicy Rot = NoRotary>
class MultiHeadAttention {
 public:
  using attention_type = Attn;
  using linear_type = Lin;

  /// One caller's scratch; after a forward it holds that call's intermediates.
  struct Workspace {
    Matrix q;        ///< (rows, heads·d) after rotary
    Matrix k, v;     ///< (key rows, kv_heads·d), keys after rotary
    Matrix context;  ///< (rows, heads·d) before the output projection
    typename Attn::Workspace attention;
  };

  /// What a training forward keeps for its backward (one per call in flight), and the backward's scratch.
  struct Saved : SavedForward {
    Matrix q, k, v;   ///< (rows, heads·d), (key rows, kv_heads·d) ×2: the projections, q and k after rotary
    Matrix context;   ///< (rows, heads·d): the policy's output
    std::vector<typename Attn::Saved> attention;  ///< the policy's, one per sequence
    typename Attn::Workspace workspace;           ///< the policy's scratch
    Matrix grad_q, grad_k, grad_v, grad_context;  ///< backward's scratch, shaped as the above
  };

  /// The projections' gradients, and the policy's when it has weights (ParametrizedAttention).
  struct Gradients {
    typename Lin::Gradients q{}, k{}, v{}, o{};
    [[no_unique_address]] detail::PolicyGradients<Attn> attention{};
  };

  MultiHeadAttention() = default;

  /// q: d_model → heads·d, k and v: d_model → kv_heads·d, o: heads·d → d_model.
  MultiHeadAttention(Lin q, Lin k, Lin v, Lin o, HeadConfig heads, Attn attention = Attn{}, Rot rotary = Rot{})
      : q_proj_(std::move(q)), k_proj_(std::move(k)), v_proj_(std::move(v)), o_proj_(std::move(o)),
        attention_(std::move(attention)), rotary_(std::move(rotary)) {
    const Index d_model = q_proj_.in_features();
    shape_.n_heads = heads.n_heads;
    shape_.n_kv_heads = heads.n_kv_heads ? heads.n_kv_heads : heads.n_heads;
    if (heads.n_heads < 1) throw config_error(detail::cat("MultiHeadAttention: n_heads is ", heads.n_heads, ", expected >= 1"));
    if (!heads.head_dim && d_model % heads.n_heads != 0)
      throw config_error(detail::cat("MultiHeadAttention: d_model ", d_model, " is not divisible by n_heads ",
                                     heads.n_heads));
    shape_.head_dim = heads.head_dim ? heads.head_dim : d_model / heads.n_heads;
    shape_.scale = 1.0f / std::sqrt(static_cast<float>(shape_.head_dim));
    shape_.validate("MultiHeadAttention");
    const Index qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    const auto expect = [](const Lin& l, const char* name, Index in, Index out) {
      if (l.in_features() != in || l.out_features() != out)
        throw shape_error(detail::cat("MultiHeadAttention: ", name, " maps ", l.in_features(), " -> ",
                                      l.out_features(), ", expected ", in, " -> ", out));
    };
    expect(q_proj_, "q projection", d_model, qd);
    expect(k_proj_, "k projection", k_proj_.in_features(), kvd);
    expect(v_proj_, "v projection", k_proj_.in_features(), kvd);
    expect(o_proj_, "output projection", qd, d_model);
  }

  Index d_model() const noexcept { return q_proj_.in_features(); }
  const AttentionShape& shape() const noexcept { return shape_; }
  // Mutable access is for setting a model up (adapters, quantization); forward never needs it.
  Lin& q_proj() noexcept { return q_proj_; }
  Lin& k_proj() noexcept { return k_proj_; }
  Lin& v_proj() noexcept { return v_proj_; }
  Lin& o_proj() noexcept { return o_proj_; }
  Attn& attention() noexcept { return attention_; }
  const Lin& q_proj() const noexcept { return q_proj_; }
  const Lin& k_proj() const noexcept { return k_proj_; }
  const Lin& v_proj() const noexcept { return v_proj_; }
  const Lin& o_proj() const noexcept { return o_proj_; }
  const Attn& attention() const noexcept { return attention_; }
  const Rot& rotary() const noexcept { return rotary_; }

  /// The projections' (and the policy's) parameters, named by `names` under `prefix`.
  void parameters(ParameterList& list, const std::string& prefix, const AttentionNames& names = {})
    requires HasParameters<Lin>
  {
    if (names.fused_in_proj) {
      ParameterList qkv;  // q, k, v under one prefix each, then fused as row blocks
      q_proj_.parameters(qkv, "q.");
      k_proj_.parameters(qkv, "k.");
      v_proj_.parameters(qkv, "v.");
      for (const char* field : {"weight", "bias"}) {
        std::vector<const Parameter*> parts;
        for (const char* head : {"q.", "k.", "v."})
          if (const Parameter* p = qkv.find(std::string(head) + field)) parts.push_back(p);
        if (parts.empty()) continue;
        if (parts.size() != 3)
          throw config_error(detail::cat("MultiHeadAttention::parameters: a fused in_proj_", field,
                                         " needs it on all of q, k and v"));
        std::vector<Index> shape = parts[0]->shape;
        shape[0] = parts[0]->shape[0] + parts[1]->shape[0] + parts[2]->shape[0];
        const Index n0 = parts[0]->numel(), n1 = parts[1]->numel();
        list.add({prefix + "in_proj_" + field, shape,
                  [r0 = parts[0]->read, r1 = parts[1]->read, r2 = parts[2]->read, n0, n1](float* out) {
                    r0(out);
                    r1(out + n0);
                    r2(out + n0 + n1);
                  },
                  [w0 = parts[0]->write, w1 = parts[1]->write, w2 = parts[2]->write, n0, n1](const float* in) {
                    w0(in);
                    w1(in + n0);
                    w2(in + n0 + n1);
                  }});
      }
    } else {
      q_proj_.parameters(list, prefix + names.q);
      k_proj_.parameters(list, prefix + names.k);
      v_proj_.parameters(list, prefix + names.v);
    }
    o_proj_.parameters(list, prefix + names.o);
    if constexpr (HasParameters<Attn>) attention_.parameters(list, prefix + names.policy);
  }

  Gradients make_gradients() const requires TrainableLinear<Lin> {
    Gradients g{q_proj_.make_gradients(), k_proj_.make_gradients(), v_proj_.make_gradients(), o_proj_.make_gradients()};
    if constexpr (ParametrizedAttention<Attn>) g.attention = attention_.make_gradients();
    return g;
  }

  /// The projections' gradients, named as parameters() names their tensors (fused in_proj_* included).
  void gradients(GradientList& list, const std::string& prefix, Gradients& g, const AttentionNames& names = {}) const
    requires TrainableLinear<Lin>
  {
    if (names.fused_in_proj) {
      GradientList qkv;  // q, k, v under one prefix each, then fused as row blocks
      q_proj_.gradients(qkv, "q.", g.q);
      k_proj_.gradients(qkv, "k.", g.k);
      v_proj_.gradients(qkv, "v.", g.v);
      for (const char* field : {"weight", "bias"}) {
        std::vector<const Gradient*> parts;
        for (const char* head : {"q.", "k.", "v."})
          if (const Gradient* p = qkv.find(std::string(head) + field)) parts.push_back(p);
        if (parts.empty()) continue;
        if (parts.size() != 3)
          throw config_error(detail::cat("MultiHeadAttention::gradients: a fused in_proj_", field,
                                         " needs it on all of q, k and v"));
        std::vector<Index> shape = parts[0]->shape;
        shape[0] = parts[0]->shape[0] + parts[1]->shape[0] + parts[2]->shape[0];
        const Index n0 = parts[0]->numel(), n1 = parts[1]->numel();
        const Gradient p0 = *parts[0], p1 = *parts[1], p2 = *parts[2];
        list.add({prefix + "in_proj_" + field, shape,
                  [p0, p1, p2, n0, n1](float* out) {
                    p0.read(out);
                    p1.read(out + n0);
                    p2.read(out + n0 + n1);
                  },
                  [p0, p1, p2] { return p0.trainable() || p1.trainable() || p2.trainable(); },
                  [p0, p1, p2](bool on) {
                    p0.set_trainable(on);
                    p1.set_trainable(on);
                    p2.set_trainable(on);
                  },
                  [p0, p1, p2] {
                    p0.zero();
                    p1.zero();
                    p2.zero();
                  },
                  [p0, p1, p2, n0, n1](const float* in) {
                    p0.write(in);
                    p1.write(in + n0);
                    p2.write(in + n0 + n1);
                  }});
      }
    } else {
      q_proj_.gradients(list, prefix + names.q, g.q);
      k_proj_.gradients(list, prefix + names.k, g.k);
      v_proj_.gradients(list, prefix + names.v, g.v);
    }
    o_proj_.gradients(list, prefix + names.o, g.o);
    if constexpr (ParametrizedAttention<Attn>) attention_.gradients(list, prefix + names.policy, g.attention);
  }

  /// Self-attention for training: forward() that keeps in `saved` what backward() needs.
  void forward_train(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Saved& saved,
                     const Context& ctx) const requires TrainableAttention<Attn> && TrainableLinear<Lin> {
    run_train("MultiHeadAttention::forward_train", x, batch, x, mask, y, saved, ctx, true);
  }
  /// Cross-attention for training: queries from x (batch·seq, d_model), keys and values from memory (batch·mem, d_kv).
  void forward_train(ConstMatrixView x, Index batch, ConstMatrixView memory, const MaskSpec& mask, MatrixView y,
                     Saved& saved, const Context& ctx) const requires TrainableAttention<Attn> && TrainableLinear<Lin> {
    run_train("MultiHeadAttention::forward_train (cross)", x, batch, memory, mask, y, saved, ctx, false);
  }

  /// The backward of self-attention's forward_train(x): adds the projections' gradients into g and writes (or, with
  /// accumulate_dx, adds) dx (batch·seq, d_model) from dy, through queries, keys and values alike. Give the same x,
  /// batch and mask as the forward. Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView x, Index batch, const MaskSpec& mask, ConstMatrixView dy, MatrixView dx, Gradients& g,
                Saved& saved, const Context& ctx, bool accumulate_dx = false) const
    requires TrainableAttention<Attn> && TrainableLinear<Lin>
  {
    run_backward("MultiHeadAttention::backward", x, batch, x, mask, dy, dx, dx, g, saved, ctx, accumulate_dx, true, true);
  }
  /// The backward of cross-attention's forward_train(x, memory): dx through the queries, dmemory through keys and
  /// values (each written, or added with its accumulate flag; a view of no columns skips it).
  void backward(ConstMatrixView x, Index batch, ConstMatrixView memory, const MaskSpec& mask, ConstMatrixView dy,
                MatrixView dx, MatrixView dmemory, Gradients& g, Saved& saved, const Context& ctx,
                bool accumulate_dx = false, bool accumulate_dmemory = false) const
    requires TrainableAttention<Attn> && TrainableLinear<Lin>
  {
    run_backward("MultiHeadAttention::backward (cross)", x, batch, memory, mask, dy, dx, dmemory, g, saved, ctx,
                 accumulate_dx, accumulate_dmemory, false);
  }

  /// Self-attention: y (batch·seq, d_model) from x (batch·seq, d_model).
  void forward(ConstMatrixView x, Index batch, const MaskSpec& mask, MatrixView y, Workspace& ws,
               const Context& ctx) const {
    run("MultiHeadAttention::forward", x, batch, x, mask, y, ws, ctx, true);
  }

  /// Cross-attention: queries from x (batch·seq, d_model), keys and values from memory (batch·mem, d_kv).
  void forward(ConstMatrixView x, Index batch, ConstMatrixView memory, const MaskSpec& mask, MatrixView y,
               Workspace& ws, const Context& ctx) const {
    run("MultiHeadAttention::forward (cross)", x, batch, memory, mask, y, ws, ctx, false);
  }

  /// The keys and values of an encoder's memory for one sequence, projected once and attended by every
  /// decoding step (cross-attention).
  struct MemoryKV {
    Matrix k, v;  // (mem, kv_heads·d) each
    Index rows() const noexcept { return k.rows(); }
  };

  /// Projects memory (mem, d_kv) of one sequence into kv.
  void project_memory(ConstMatrixView memory, MemoryKV& kv, const Context& ctx) const {
    const char* func = "MultiHeadAttention::project_memory";
    ctx.validate(func);
    check_cols(memory, k_proj_.in_features(), func, "memory");
    const Index kvd = shape_.n_kv_heads * shape_.head_dim;
    ensure_shape(kv.k, memory.rows(), kvd);
    ensure_shape(kv.v, memory.rows(), kvd);
    k_proj_.forward(memory, view(kv.k), ctx);
    v_proj_.forward(memory, view(kv.v), ctx);
  }

  /// Cross-attention of one sequence over memory projected by project_memory: y (n, d_model) from x (n, d_model).
  void forward(ConstMatrixView x, const MemoryKV& memory, const MaskSpec& mask, MatrixView y, Workspace& ws,
               const Context& ctx) const {
    const char* func = "MultiHeadAttention::forward (projected memory)";
    ctx.validate(func);
    check_cols(x, d_model(), func, "x");
    check_shape(y, x.rows(), d_model(), func, "y");
    check_cols(memory.k, shape_.n_kv_heads * shape_.head_dim, func, "memory.k");
    check_shape(memory.v, memory.k.rows(), memory.k.cols(), func, "memory.v");
    mask.validate(func, 1, x.rows(), memory.rows());
    attend(x, 1, cview(memory.k), cview(memory.v), mask, y, ws, ctx, false);
  }

  /// The per-sequence decoding state of this module (a KV cache for FullAttention), for `capacity` positions.
  auto make_state(Index capacity) const requires IncrementalAttention<Attn> {
    return attention_.make_state(capacity, shape_.n_kv_heads, shape_.head_dim);
  }

  /// Incremental causal self-attention of one sequence: x (n_new, d_model) holds positions state.size()
  /// onwards; their keys (after rotary) and values join `state`, and each new position attends to every
  /// held position up to its own. y (n_new, d_model). Prefill is one call with the whole prompt, decoding
  /// one call per token.
  template <typename State>
    requires IncrementalAttention<Attn> && std::same_as<State, typename Attn::State>
  void forward_cached(ConstMatrixView x, State& state, MatrixView y, Workspace& ws, const Context& ctx) const {
    State* const states[] = {&state};
    const Index rows[] = {x.rows()};
    forward_cached(x, std::span<State* const>(states), std::span<const Index>(rows), y, ws, ctx);
  }

  /// Incremental causal self-attention of several sequences in one pass: x (Σ rows[i], d_model) holds
  /// rows[i] new positions of sequence i (after those of sequence i − 1), which continue states[i]. The
  /// projections run once over all rows (each weight read once for the whole batch); each sequence attends
  /// over its own state. y (Σ rows[i], d_model).
  template <typename State>
    requires IncrementalAttention<Attn> && std::same_as<State, typename Attn::State>
  void forward_cached(ConstMatrixView x, std::span<State* const> states, std::span<const Index> rows, MatrixView y,
                      Workspace& ws, const Context& ctx) const {
    const char* func = "MultiHeadAttention::forward_cached";
    ctx.validate(func);
    check_cols(x, d_model(), func, "x");
    check_shape(y, x.rows(), d_model(), func, "y");
    if (states.size() != rows.size())
      throw config_error(detail::cat(func, ": ", states.size(), " states for ", rows.size(), " row counts, expected as many"));
    Index total = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] < 0 || states[i] == nullptr)
        throw config_error(detail::cat(func, ": sequence ", i, " has ", rows[i], " rows", states[i] ? "" : " and no state",
                                       ", expected >= 0 rows and a state"));
      total += rows[i];
    }
    if (total != x.rows())
      throw shape_error(detail::cat(func, ": x has ", x.rows(), " rows, expected the sum of the sequences' rows ", total));
    const Index n = x.rows(), qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    for (Matrix* m : {&ws.q, &ws.context}) ensure_shape(*m, n, qd);
    for (Matrix* m : {&ws.k, &ws.v}) ensure_shape(*m, n, kvd);
    q_proj_.forward(x, view(ws.q), ctx);
    k_proj_.forward(x, view(ws.k), ctx);
    v_proj_.forward(x, view(ws.v), ctx);
    Index r0 = 0;
    for (std::size_t i = 0; i < rows.size(); r0 += rows[i], ++i) {
      const Index m = rows[i];
      if (m == 0) continue;
      if constexpr (Rot::enabled) {
        const Index first_position = states[i]->size();
        rotary_.apply(ws.q.data() + r0 * qd, m, qd, shape_.n_heads, shape_.head_dim, first_position);
        rotary_.apply(ws.k.data() + r0 * kvd, m, kvd, shape_.n_kv_heads, shape_.head_dim, first_position);
      }
      attention_.forward_cached(shape_, block(cview(ws.q), r0, 0, m, qd), block(cview(ws.k), r0, 0, m, kvd),
                                block(cview(ws.v), r0, 0, m, kvd), *states[i], block(view(ws.context), r0, 0, m, qd),
                                ws.attention, ctx);
    }
    o_proj_.forward(cview(ws.context), y, ctx);
  }

  /// Precomputes what rotary positions need for positions [0, max_positions) (a no-op without rotary).
  void reserve_positions(Index max_positions) {
    if constexpr (Rot::enabled) rotary_.reserve(max_positions, shape_.head_dim);
  }

 private:
  /// The checks of every batched call: x, keys' input, batch and masks.
  void check_batch(const char* func, ConstMatrixView x, Index batch, ConstMatrixView kv_in, const MaskSpec& mask,
                   bool self) const {
    check_cols(x, d_model(), func, "x");
    check_cols(kv_in, k_proj_.in_features(), func, self ? "x" : "memory");
    if (batch < 1 || x.rows() % batch != 0 || kv_in.rows() % batch != 0)
      throw shape_error(detail::cat(func, ": batch is ", batch, " but x has ", x.rows(), " rows and keys ",
                                    kv_in.rows(), ", expected multiples of batch"));
    mask.validate(func, batch, x.rows() / batch, kv_in.rows() / batch);
  }

  void run_train(const char* func, ConstMatrixView x, Index batch, ConstMatrixView kv_in, const MaskSpec& mask,
                 MatrixView y, Saved& saved, const Context& ctx, bool self) const {
    ctx.validate(func);
    check_batch(func, x, batch, kv_in, mask, self);
    check_shape(y, x.rows(), d_model(), func, "y");
    const Index n_q = x.rows() / batch, n_k = kv_in.rows() / batch;
    const Index qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    ensure_shape(saved.q, x.rows(), qd);
    ensure_shape(saved.context, x.rows(), qd);
    ensure_shape(saved.k, kv_in.rows(), kvd);
    ensure_shape(saved.v, kv_in.rows(), kvd);
    q_proj_.forward(x, view(saved.q), ctx);
    k_proj_.forward(kv_in, view(saved.k), ctx);
    v_proj_.forward(kv_in, view(saved.v), ctx);
    if constexpr (Rot::enabled) {
      if (self)
        for (Index b = 0; b < batch; ++b) {
          rotary_.apply(saved.q.data() + b * n_q * qd, n_q, qd, shape_.n_heads, shape_.head_dim, 0);
          rotary_.apply(saved.k.data() + b * n_k * kvd, n_k, kvd, shape_.n_kv_heads, shape_.head_dim, 0);
        }
    }
    saved.attention.resize(static_cast<std::size_t>(batch));
    for (Index b = 0; b < batch; ++b)
      attention_.forward_train(shape_, block(cview(saved.q), b * n_q, 0, n_q, qd), block(cview(saved.k), b * n_k, 0, n_k, kvd),
                               block(cview(saved.v), b * n_k, 0, n_k, kvd), mask.for_sequence(b),
                               block(view(saved.context), b * n_q, 0, n_q, qd), saved.attention[std::size_t(b)],
                               saved.workspace, ctx);
    o_proj_.forward(cview(saved.context), y, ctx);
    saved.record();
  }

  void run_backward(const char* func, ConstMatrixView x, Index batch, ConstMatrixView kv_in, const MaskSpec& mask,
                    ConstMatrixView dy, MatrixView dx, MatrixView dkv, Gradients& g, Saved& saved, const Context& ctx,
                    bool accumulate_dx, bool accumulate_dkv, bool self) const {
    ctx.validate(func);
    saved.require_held(func);
    check_batch(func, x, batch, kv_in, mask, self);
    check_shape(dy, x.rows(), d_model(), func, "dy");
    if (dx.cols() != 0) check_shape(dx, x.rows(), d_model(), func, "dx");
    if (!self && dkv.cols() != 0) check_shape(dkv, kv_in.rows(), k_proj_.in_features(), func, "dmemory");
    const Index n_q = x.rows() / batch, n_k = kv_in.rows() / batch;
    const Index qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    check_shape(saved.context, x.rows(), qd, func, "the saved context");
    check_shape(saved.k, kv_in.rows(), kvd, func, "the saved keys");
    if (static_cast<Index>(saved.attention.size()) != batch)
      throw shape_error(detail::cat(func, ": the saved forward ran ", saved.attention.size(), " sequences, expected ", batch));
    if constexpr (ParametrizedAttention<Attn>) attention_.check_gradients(func, g.attention);
    saved.take(func);
    ensure_shape(saved.grad_context, x.rows(), qd);
    ensure_shape(saved.grad_q, x.rows(), qd);
    ensure_shape(saved.grad_k, kv_in.rows(), kvd);
    ensure_shape(saved.grad_v, kv_in.rows(), kvd);
    o_proj_.backward(cview(saved.context), dy, view(saved.grad_context), g.o, ctx);
    for (Index b = 0; b < batch; ++b) {
      typename Attn::Saved& s = saved.attention[std::size_t(b)];
      s.keep = s.keep || saved.keep;
      const auto run = [&](auto&... policy_grads) {
        attention_.backward(shape_, block(cview(saved.q), b * n_q, 0, n_q, qd),
                            block(cview(saved.k), b * n_k, 0, n_k, kvd), block(cview(saved.v), b * n_k, 0, n_k, kvd),
                            mask.for_sequence(b), block(cview(saved.context), b * n_q, 0, n_q, qd),
                            block(cview(saved.grad_context), b * n_q, 0, n_q, qd), s,
                            block(view(saved.grad_q), b * n_q, 0, n_q, qd), block(view(saved.grad_k), b * n_k, 0, n_k, kvd),
                            block(view(saved.grad_v), b * n_k, 0, n_k, kvd), policy_grads..., saved.workspace, ctx);
      };
      if constexpr (ParametrizedAttention<Attn>) run(g.attention);
      else run();
    }
    if constexpr (Rot::enabled) {
      if (self)
        for (Index b = 0; b < batch; ++b) {
          rotary_.unapply(saved.grad_q.data() + b * n_q * qd, n_q, qd, shape_.n_heads, shape_.head_dim, 0);
          rotary_.unapply(saved.grad_k.data() + b * n_k * kvd, n_k, kvd, shape_.n_kv_heads, shape_.head_dim, 0);
        }
    }
    // Self-attention: dx and dkv are one view; the key and value paths add to what the query path wrote.
    q_proj_.backward(x, cview(saved.grad_q), dx, g.q, ctx, accumulate_dx);
    const bool kv_accumulate = self ? dx.cols() != 0 : accumulate_dkv;
    k_proj_.backward(kv_in, cview(saved.grad_k), dkv, g.k, ctx, kv_accumulate);
    v_proj_.backward(kv_in, cview(saved.grad_v), dkv, g.v, ctx, dkv.cols() != 0);
  }

  void run(const char* func, ConstMatrixView x, Index batch, ConstMatrixView kv_in, const MaskSpec& mask,
           MatrixView y, Workspace& ws, const Context& ctx, bool self) const {
    ctx.validate(func);
    check_cols(x, d_model(), func, "x");
    check_cols(kv_in, k_proj_.in_features(), func, self ? "x" : "memory");
    if (batch < 1 || x.rows() % batch != 0 || kv_in.rows() % batch != 0)
      throw shape_error(detail::cat(func, ": batch is ", batch, " but x has ", x.rows(), " rows and keys ",
                                    kv_in.rows(), ", expected multiples of batch"));
    check_shape(y, x.rows(), d_model(), func, "y");
    mask.validate(func, batch, x.rows() / batch, kv_in.rows() / batch);
    const Index kvd = shape_.n_kv_heads * shape_.head_dim;
    ensure_shape(ws.k, kv_in.rows(), kvd);
    ensure_shape(ws.v, kv_in.rows(), kvd);
    k_proj_.forward(kv_in, view(ws.k), ctx);
    v_proj_.forward(kv_in, view(ws.v), ctx);
    attend(x, batch, cview(ws.k), cview(ws.v), mask, y, ws, ctx, self);
  }

  /// Projects the queries of x, rotates queries and keys (self-attention), runs the policy per sequence over
  /// keys and values k, v (batch·n_k, kv_heads·d), and projects the context into y.
  void attend(ConstMatrixView x, Index batch, ConstMatrixView k, ConstMatrixView v, const MaskSpec& mask,
              MatrixView y, Workspace& ws, const Context& ctx, bool self) const {
    const Index n_q = x.rows() / batch, n_k = k.rows() / batch;
    const Index qd = shape_.n_heads * shape_.head_dim, kvd = shape_.n_kv_heads * shape_.head_dim;
    ensure_shape(ws.q, x.rows(), qd);
    ensure_shape(ws.context, x.rows(), qd);
    q_proj_.forward(x, view(ws.q), ctx);
    if constexpr (Rot::enabled) {
      if (self)
        for (Index b = 0; b < batch; ++b) {
          rotary_.apply(ws.q.data() + b * n_q * qd, n_q, qd, shape_.n_heads, shape_.head_dim, 0);
          rotary_.apply(ws.k.data() + b * n_k * kvd, n_k, kvd, shape_.n_kv_heads, shape_.head_dim, 0);
        }
    }
    for (Index b = 0; b < batch; ++b)
      attention_.forward(shape_, block(cview(ws.q), b * n_q, 0, n_q, qd), block(k, b * n_k, 0, n_k, kvd),
                         block(v, b * n_k, 0, n_k, kvd), mask.for_sequence(b),
                         block(view(ws.context), b * n_q, 0, n_q, qd), ws.attention, ctx);
    o_proj_.forward(cview(ws.context), y, ctx);
  }

  Lin q_proj_{}, k_proj_{}, v_proj_{}, o_proj_{};
  Attn attention_{};
  Rot rotary_{};
  AttentionShape shape_{};
};

}  // namespace polyformer
