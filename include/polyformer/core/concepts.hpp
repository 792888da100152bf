#pragma once
/// \file The policy contracts. A block is composed from policies chosen at compile time; each policy
/// kind is a C++20 concept here, so a wrong type fails with a message naming the missing expression.

#include <concepts>
#include <cstddef>
#include <string>
#include <utility>

#include "polyformer/core/context.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

struct AttentionShape;
struct AttentionMask;

/// A linear map y (n, out) = f(x (n, in)): Dense, Int8, LoRA<Inner>. forward is `const` and keeps no state
/// between calls, so one layer serves any number of threads.
template <typename L>
concept LinearPolicy = std::movable<L> && requires(const L& l, ConstMatrixView x, MatrixView y, const Context& ctx) {
  { l.in_features() } -> std::convertible_to<Index>;
  { l.out_features() } -> std::convertible_to<Index>;
  { l.has_bias() } -> std::convertible_to<bool>;
  l.forward(x, y, ctx);
};

/// A linear policy that trains: Gradients buffers of its own (make_gradients, listed by gradients(list, prefix, g)),
/// and backward(x, dy, dx, g, ctx, accumulate_dx), which adds the parameters' gradients into g and writes (or adds)
/// dx (n, in) = ∂/∂x; a dx of no columns is skipped.
template <typename L>
concept TrainableLinear = LinearPolicy<L> &&
    requires(const L& l, ConstMatrixView x, ConstMatrixView dy, MatrixView dx, typename L::Gradients& g,
             GradientList& list, const std::string& prefix, const Context& ctx) {
  { l.make_gradients() } -> std::same_as<typename L::Gradients>;
  l.gradients(list, prefix, g);
  l.backward(x, dy, dx, g, ctx, true);
};

/// A position-wise feed-forward sublayer y (n, d) = f(x (n, d)) that a block calls between its residuals:
/// FeedForward (layers/ffn.hpp), MixtureOfExperts (layers/moe.hpp). The weights are read through `const`;
/// everything a call writes besides y lives in the caller's `Workspace` (one per concurrent caller, reused
/// across calls so that nothing is allocated once it has grown). y must not alias x.
template <typename F>
concept FeedForwardPolicy = std::movable<F> && std::default_initializable<typename F::Workspace> &&
    requires(const F& f, ConstMatrixView x, MatrixView y, typename F::Workspace& ws, const Context& ctx) {
  { f.dim() } -> std::convertible_to<Index>;
  f.forward(x, y, ws, ctx);
};

/// A feed-forward policy that trains: forward_train(x, y, saved, ctx) keeps what backward(x, dy, dx, g, saved, ctx,
/// accumulate_dx) needs in its Saved; gradients as TrainableLinear's.
template <typename F>
concept TrainableFeedForward = FeedForwardPolicy<F> && std::default_initializable<typename F::Saved> &&
    requires(const F& f, ConstMatrixView x, MatrixView y, ConstMatrixView dy, typename F::Saved& saved,
             typename F::Gradients& g, GradientList& list, const std::string& prefix, const Context& ctx) {
  { f.make_gradients() } -> std::same_as<typename F::Gradients>;
  f.gradients(list, prefix, g);
  f.forward_train(x, y, saved, ctx);
  f.backward(x, dy, y, g, saved, ctx, true);
};

/// A row-wise normalization (LayerNorm, RMSNorm): y (n, d) = norm(x (n, d)).
template <typename N>
concept NormPolicy = std::movable<N> && requires(const N& norm, ConstMatrixView x, MatrixView y) {
  { norm.dim() } -> std::convertible_to<Index>;
  norm.forward(x, y);
};

/// A norm that trains: backward(x, dy, dx, g) writes dx and adds its gains' gradients into g.
template <typename N>
concept TrainableNorm = NormPolicy<N> &&
    requires(const N& norm, ConstMatrixView x, ConstMatrixView dy, MatrixView dx, typename N::Gradients& g,
             GradientList& list, const std::string& prefix) {
  { norm.make_gradients() } -> std::same_as<typename N::Gradients>;
  norm.gradients(list, prefix, g);
  norm.backward(x, dy, dx, g);
};

/// A plain element-wise activation: apply(x, y, n), y may alias x.
template <typename A>
concept PlainActivation = requires(const float* x, float* y, std::size_t n) {
  requires !A::gated;
  A::apply(x, y, n);
  A::backward(x, x, y, n);  // dx = f′(x)·dy
};

/// A gated activation (SwiGLU): y = act(gate) ⊙ up.
template <typename A>
concept GatedActivation = requires(const float* gate, const float* up, float* y, std::size_t n) {
  requires A::gated;
  A::apply(gate, up, y, n);
  A::backward(gate, up, up, y, y, n);  // dgate, dup from dy
};

/// An FFN activation policy: plain or gated.
template <typename A>
concept ActivationPolicy = PlainActivation<A> || GatedActivation<A>;

/// A rotary position policy applied to query and key rows inside attention (NoRotary, RoPE).
template <typename R>
concept RotaryPolicy = requires(const R& r, float* rows, Index n_rows, Index row_stride, Index n_heads,
                                Index head_dim, Index first_position) {
  r.apply(rows, n_rows, row_stride, n_heads, head_dim, first_position);
  r.unapply(rows, n_rows, row_stride, n_heads, head_dim, first_position);  // the inverse, apply's backward
};

/// The score/softmax/value part of attention: out (n_q, heads·d) from q (n_q, heads·d),
/// k and v (n_k, kv_heads·d), one sequence at a time. `supports_causal` says whether a causal mask can
/// be honoured (decoders require it at compile time). The policy object holds only its settings and
/// parameters and is used through `const`: scratch lives in the caller's `P::Workspace`, so one policy
/// object serves any number of threads, each with its own workspace.
template <typename P>
concept AttentionPolicy = std::default_initializable<P> && std::default_initializable<typename P::Workspace> &&
    requires(const P& p, const AttentionShape& shape, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
             const AttentionMask& mask, MatrixView out, typename P::Workspace& ws, const Context& ctx) {
  { P::supports_causal } -> std::convertible_to<bool>;
  p.forward(shape, q, k, v, mask, out, ws, ctx);
};

/// An attention policy that adds a mask's additive bias (AttentionMask::additive) to its scores before the softmax,
/// as T5's relative position bias needs (RelativePositionAttention<P>). A policy says so with
/// `static constexpr bool supports_additive_bias = true`; Linformer's projected keys and the kernelized policies,
/// which never form the scores, cannot, nor can LSH attention, whose keys are its own queries (shared-QK).
template <typename P>
concept AdditiveBiasAttention = AttentionPolicy<P> && requires {
  requires P::supports_additive_bias;
};

/// An attention policy that trains: forward_train keeps in its Saved what backward needs, and
/// backward(shape, q, k, v, mask, out, dout, saved, dq, dk, dv, ws, ctx) writes the gradients of q, k and v from
/// those of the output (dout), given the same inputs and forward's output `out`.
template <typename P>
concept TrainableAttention = AttentionPolicy<P> && std::default_initializable<typename P::Saved> &&
    requires(const P& p, const AttentionShape& shape, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
             const AttentionMask& mask, MatrixView out, typename P::Saved& saved, typename P::Workspace& ws,
             const Context& ctx) {
  p.forward_train(shape, q, k, v, mask, out, saved, ws, ctx);
  p.backward(shape, q, k, v, mask, q, q, saved, out, out, out, ws, ctx);
};

/// A trainable attention policy with weights of its own (Linformer's E and F): make_gradients() and
/// gradients(list, prefix, g) as TrainableLinear's, check_gradients(func, g) (throws unless g fits the weights), and
/// a backward that also adds their gradients into g.
template <typename P>
concept ParametrizedAttention = TrainableAttention<P> &&
    requires(const P& p, const AttentionShape& shape, ConstMatrixView q, const AttentionMask& mask, MatrixView out,
             typename P::Saved& saved, typename P::Gradients& g, GradientList& list, const std::string& prefix,
             typename P::Workspace& ws, const Context& ctx) {
  { p.make_gradients() } -> std::same_as<typename P::Gradients>;
  p.gradients(list, prefix, g);
  p.check_gradients(prefix.c_str(), std::as_const(g));
  p.backward(shape, q, q, q, mask, q, q, saved, out, out, out, g, ws, ctx);
};

/// An attention policy that can decode incrementally: it makes the per-sequence state it keeps (`State`: a
/// KV cache, a window of recent keys, or recurrent sums) with make_state(capacity, kv_heads, head_dim), and
/// `forward_cached` appends new positions' keys and values (n_new, kv_heads·d) to it while its queries
/// (n_new, heads·d) attend causally. state.size() is the number of positions seen. The state belongs to
/// one sequence and its caller; the policy stays `const`.
template <typename P>
concept IncrementalAttention = AttentionPolicy<P> &&
    requires(const P& p, const AttentionShape& shape, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
             typename P::State& state, MatrixView out, typename P::Workspace& ws, const Context& ctx, Index n) {
  { p.make_state(n, n, n) } -> std::same_as<typename P::State>;
  { std::as_const(state).size() } -> std::convertible_to<Index>;
  state.clear();
  p.forward_cached(shape, q, k, v, state, out, ws, ctx);
};

/// Gives an attention policy `Derived` the workspace-free overloads forward(shape, q, k, v, mask, out, ctx)
/// and forward_cached(shape, q, k, v, state, out, ctx), each with a scratch workspace of its own call (simple
/// and thread-safe; a caller that runs many calls keeps a Workspace and passes it instead). Derived says
/// `using PerCallWorkspace<Derived>::forward;` (and `::forward_cached`) beside its own overloads.
template <typename Derived>
struct PerCallWorkspace {
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, const Context& ctx) const {
    typename Derived::Workspace ws;
    static_cast<const Derived&>(*this).forward(s, q, k, v, mask, out, ws, ctx);
  }
  template <typename State>
  void forward_cached(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k_new, ConstMatrixView v_new, State& state,
                      MatrixView out, const Context& ctx) const {
    typename Derived::Workspace ws;
    static_cast<const Derived&>(*this).forward_cached(s, q, k_new, v_new, state, out, ws, ctx);
  }
};

}  // namespace polyformer
