#pragma once
/// \file Position-wise feed-forward network: down(act(up(x))) or, gated, down(act(gate(x), up(x))).

#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/activation.hpp"

namespace polyformer {

/// How an FFN's projections are named in a checkpoint: torch.nn.TransformerEncoderLayer's linear1 and linear2
/// by default; llama2.c's w1 (gate), w3 (up) and w2 (down) with llama_names().
struct FFNNames {
  std::string gate = "gate_proj.", up = "linear1.", down = "linear2.";
};

/// FFN over linear policy `Lin` and activation `Act`. Plain: y = down(act(up x)) — torch's linear1 (up)
/// and linear2 (down). Gated (SwiGLU): y = down(act(gate x, up x)) — Llama's w1 (gate), w3 (up), w2 (down).
/// The weights are read through `const`; the hidden buffers live in the caller's Workspace, so one object serves
/// any number of threads, each with its own workspace.
template <LinearPolicy Lin, ActivationPolicy Act>
class FeedForward {
 public:
  using linear_type = Lin;
  using activation_type = Act;
  static constexpr bool gated = Act::gated;

  /// One caller's scratch, sized to the rows of the last forward (reused while they stay the same).
  struct Workspace {
    Matrix hidden;    ///< (n, hidden): the activated hidden state of the last forward — kept for a backward pass
    Matrix gate_out;  ///< (n, hidden): the gate projection, gated only
  };

  /// What a training forward keeps for its backward (one per call in flight), and the backward's scratch.
  struct Saved : SavedForward {
    Matrix pre;          ///< (n, hidden): up(x), before the activation
    Matrix gate_pre;     ///< (n, hidden): gate(x), gated only
    Matrix hidden;       ///< (n, hidden): the activated hidden state, down's input
    Matrix grad_hidden;  ///< (n, hidden): backward's scratch
    Matrix grad_up;      ///< (n, hidden): backward's scratch, gated only
  };

  /// The projections' gradients.
  struct Gradients {
    std::conditional_t<gated, typename Lin::Gradients, std::monostate> gate{};
    typename Lin::Gradients up{}, down{};
  };

  FeedForward() = default;

  /// Plain FFN from its two projections: up (d → hidden), down (hidden → d).
  FeedForward(Lin up, Lin down) requires(!gated) : up_(std::move(up)), down_(std::move(down)) { check(); }
  /// Gated FFN: gate and up (d → hidden), down (hidden → d).
  FeedForward(Lin gate, Lin up, Lin down) requires(gated)
      : gate_(std::move(gate)), up_(std::move(up)), down_(std::move(down)) { check(); }

  Index dim() const noexcept { return up_.in_features(); }
  Index hidden_dim() const noexcept { return up_.out_features(); }

  /// The projections' parameters, named by `names` under `prefix`.
  void parameters(ParameterList& list, const std::string& prefix, const FFNNames& names = {})
    requires HasParameters<Lin>
  {
    if constexpr (gated) gate_.parameters(list, prefix + names.gate);
    up_.parameters(list, prefix + names.up);
    down_.parameters(list, prefix + names.down);
  }

  Gradients make_gradients() const requires TrainableLinear<Lin> {
    Gradients g;
    if constexpr (gated) g.gate = gate_.make_gradients();
    g.up = up_.make_gradients();
    g.down = down_.make_gradients();
    return g;
  }
  /// The projections' gradients, named as parameters() names their tensors.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g, const FFNNames& names = {}) const
    requires TrainableLinear<Lin>
  {
    if constexpr (gated) gate_.gradients(list, prefix + names.gate, g.gate);
    up_.gradients(list, prefix + names.up, g.up);
    down_.gradients(list, prefix + names.down, g.down);
  }

  Lin& up() noexcept { return up_; }
  Lin& down() noexcept { return down_; }
  Lin& gate() noexcept requires(gated) { return gate_; }
  const Lin& up() const noexcept { return up_; }
  const Lin& down() const noexcept { return down_; }
  const Lin& gate() const noexcept requires(gated) { return gate_; }

  /// y (n, d) = FFN(x (n, d)) with the caller's workspace. y must not alias x.
  void forward(ConstMatrixView x, MatrixView y, Workspace& ws, const Context& ctx) const {
    check_cols(x, dim(), "FeedForward::forward", "x");
    check_shape(y, x.rows(), dim(), "FeedForward::forward", "y");
    const Index n = x.rows(), h = hidden_dim();
    ensure_shape(ws.hidden, n, h);
    if constexpr (gated) {
      ensure_shape(ws.gate_out, n, h);
      forward_into(x, y, view(ws.hidden), view(ws.gate_out), ctx);
    } else {
      forward_into(x, y, view(ws.hidden), MatrixView(nullptr, 0, 0, Eigen::OuterStride<>(1)), ctx);
    }
  }

  /// The same with a workspace of this call's own (allocates its hidden buffers every call).
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    Workspace ws;
    forward(x, y, ws, ctx);
  }

  /// forward() that keeps in `saved` what backward() needs: the projections before and after the activation.
  void forward_train(ConstMatrixView x, MatrixView y, Saved& saved, const Context& ctx) const
    requires TrainableLinear<Lin>
  {
    const char* func = "FeedForward::forward_train";
    check_cols(x, dim(), func, "x");
    check_shape(y, x.rows(), dim(), func, "y");
    const Index n = x.rows(), h = hidden_dim();
    ensure_shape(saved.pre, n, h);
    ensure_shape(saved.hidden, n, h);
    up_.forward(x, view(saved.pre), ctx);
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    if constexpr (gated) {
      ensure_shape(saved.gate_pre, n, h);
      gate_.forward(x, view(saved.gate_pre), ctx);
      rows_in_parallel(n, ctx, [&](Index r0, Index r1) {
        Act::apply(saved.gate_pre.data() + r0 * h, saved.pre.data() + r0 * h, saved.hidden.data() + r0 * h, u((r1 - r0) * h));
      });
    } else {
      rows_in_parallel(n, ctx, [&](Index r0, Index r1) {
        Act::apply(saved.pre.data() + r0 * h, saved.hidden.data() + r0 * h, u((r1 - r0) * h));
      });
    }
    down_.forward(cview(saved.hidden), y, ctx);
    saved.record();
  }

  /// The backward of forward_train(x): adds the projections' gradients into g and writes (or, with accumulate_dx,
  /// adds) dx (n, d) from dy (n, d). Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients& g, Saved& saved, const Context& ctx,
                bool accumulate_dx = false) const
    requires TrainableLinear<Lin>
  {
    const char* func = "FeedForward::backward";
    saved.require_held(func);
    check_cols(x, dim(), func, "x");
    check_shape(dy, x.rows(), dim(), func, "dy");
    if (dx.cols() != 0) check_shape(dx, x.rows(), dim(), func, "dx");
    check_shape(saved.hidden, x.rows(), hidden_dim(), func, "the saved hidden state");
    saved.take(func);
    const Index n = x.rows(), h = hidden_dim();
    ensure_shape(saved.grad_hidden, n, h);
    down_.backward(cview(saved.hidden), dy, view(saved.grad_hidden), g.down, ctx);
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    float* const dh = saved.grad_hidden.data();
    if constexpr (gated) {
      // d gate over grad_hidden (each lane reads before it writes), d up into grad_up: the saved projections stay
      // as the forward left them (a kept forward runs backward again).
      ensure_shape(saved.grad_up, n, h);
      rows_in_parallel(n, ctx, [&](Index r0, Index r1) {
        Act::backward(saved.gate_pre.data() + r0 * h, saved.pre.data() + r0 * h, dh + r0 * h, dh + r0 * h,
                      saved.grad_up.data() + r0 * h, u((r1 - r0) * h));
      });
      gate_.backward(x, cview(saved.grad_hidden), dx, g.gate, ctx, accumulate_dx);
      up_.backward(x, cview(saved.grad_up), dx, g.up, ctx, dx.cols() != 0);
    } else {
      rows_in_parallel(n, ctx, [&](Index r0, Index r1) {
        Act::backward(saved.pre.data() + r0 * h, dh + r0 * h, dh + r0 * h, u((r1 - r0) * h));
      });
      up_.backward(x, cview(saved.grad_hidden), dx, g.up, ctx, accumulate_dx);
    }
  }

  /// The same product over the caller's buffers: hidden (n, hidden) receives the activated hidden state and,
  /// gated, gate_out (n, hidden) the gate projection (ignored when plain). For callers that run many FFNs over
  /// changing row counts from one buffer (MixtureOfExperts). Shapes are the caller's contract.
  void forward_into(ConstMatrixView x, MatrixView y, MatrixView hidden, MatrixView gate_out, const Context& ctx) const {
    const Index n = x.rows(), h = hidden_dim();
    POLYFORMER_ASSERT(hidden.rows() == n && hidden.cols() == h && hidden.outerStride() == h);
    up_.forward(x, hidden, ctx);
    const int act_threads = n * h >= (1 << 15) ? ctx.threads : 1;
    float* const hid = hidden.data();
    if constexpr (gated) {
      POLYFORMER_ASSERT(gate_out.rows() == n && gate_out.cols() == h && gate_out.outerStride() == h);
      gate_.forward(x, gate_out, ctx);
      const float* const g = gate_out.data();
      parallel_chunks(n, act_threads, [&](Index r0, Index r1, int) {
        Act::apply(g + r0 * h, hid + r0 * h, hid + r0 * h, static_cast<std::size_t>((r1 - r0) * h));
      });
    } else {
      (void)gate_out;
      parallel_chunks(n, act_threads, [&](Index r0, Index r1, int) {
        Act::apply(hid + r0 * h, hid + r0 * h, static_cast<std::size_t>((r1 - r0) * h));
      });
    }
    down_.forward(ConstMatrixView(hid, n, h, Eigen::OuterStride<>(h)), y, ctx);
  }

 private:
  /// f(r0, r1) over row ranges of n rows of the hidden width: on ctx.threads threads when the work is large enough.
  template <typename F>
  void rows_in_parallel(Index n, const Context& ctx, F&& f) const {
    const int t = n * hidden_dim() >= (1 << 15) ? ctx.threads : 1;
    parallel_chunks(n, t, [&](Index r0, Index r1, int) { f(r0, r1); });
  }

  void check() const {
    if (down_.in_features() != up_.out_features() || down_.out_features() != up_.in_features())
      throw shape_error(detail::cat("FeedForward: up maps ", up_.in_features(), " -> ", up_.out_features(),
                                    " but down maps ", down_.in_features(), " -> ", down_.out_features(),
                                    ", expected down to map ", up_.out_features(), " -> ", up_.in_features()));
    if constexpr (gated) {
      if (gate_.in_features() != up_.in_features() || gate_.out_features() != up_.out_features())
        throw shape_error(detail::cat("FeedForward: gate maps ", gate_.in_features(), " -> ", gate_.out_features(),
                                      ", expected ", up_.in_features(), " -> ", up_.out_features()));
    }
  }

  std::conditional_t<gated, Lin, std::monostate> gate_{};
  Lin up_{}, down_{};
};

}  // namespace polyformer
