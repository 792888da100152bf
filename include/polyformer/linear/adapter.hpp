#pragma once
/// \file Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", §2.1) as a
/// linear policy around any other: y = z + W_up·act(W_down·z + b_down) + b_up with z = Inner(x). In a transformer
/// block Houlsby's adapter sits on each sublayer's output before the residual add, i.e. on the output of the
/// attention's output projection and of the FFN's down projection: a block whose linear policy is
/// BottleneckAdapter<Dense> and that adds adapters to o_proj() and ffn().down() (and to nothing else) has exactly
/// that placement. Layers without an adapter compute exactly as Inner, so a model type can carry the wrapper on
/// every linear layer and switch it on for some.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parameters.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// `Inner` followed by an optional bottleneck adapter of width m (the bottleneck):
///   Z = Inner(X) (n, out),  H = Z·W_downᵀ + b_down (n, m),  A = act(H),  Y = Z + A·W_upᵀ + b_up (n, out),
/// rows being tokens, with W_down (m, out), b_down (m), W_up (out, m), b_up (out). `Act` is any plain activation
/// policy (layers/activation.hpp); the default is the exact (erf) GELU, as Houlsby's adapter code and PEFT's use.
/// Without an adapter (has_adapter() false) forward() is Inner's forward and nothing else, bit for bit.
/// forward() is `const` and writes nothing to the object: its (n, m) intermediate is scratch of the call (on the
/// stack when small), so one layer serves any number of threads.
template <LinearPolicy Inner, PlainActivation Act = GELU>
class BottleneckAdapter {
 public:
  using inner_type = Inner;
  using activation_type = Act;

  BottleneckAdapter() = default;
  /// Wraps a built linear layer, with no adapter.
  explicit BottleneckAdapter(Inner inner) : inner_(std::move(inner)) {}
  /// Builds the inner layer from its weight (out, in) and bias — a Dense copies it, an Int8 quantizes it.
  explicit BottleneckAdapter(Matrix weight, Vector bias = Vector())
    requires std::constructible_from<Inner, Matrix, Vector>
      : inner_(std::move(weight), std::move(bias)) {}

  Index in_features() const noexcept { return inner_.in_features(); }
  Index out_features() const noexcept { return inner_.out_features(); }
  bool has_bias() const noexcept { return inner_.has_bias(); }

  const Inner& inner() const noexcept { return inner_; }
  /// The wrapped layer, to change (the adapter does not depend on its weights, only on its out_features()).
  Inner& mutable_inner() noexcept { return inner_; }

  bool has_adapter() const noexcept { return down_.size() != 0; }
  /// The adapter's width m; 0 without an adapter.
  Index bottleneck() const noexcept { return down_.rows(); }
  const Matrix& down() const noexcept { return down_; }            ///< W_down (m, out)
  const Vector& down_bias() const noexcept { return down_bias_; }  ///< b_down (m)
  const Matrix& up() const noexcept { return up_; }                ///< W_up (out, m)
  const Vector& up_bias() const noexcept { return up_bias_; }      ///< b_up (out)

  /// Adds (or replaces) a fresh adapter of width `bottleneck`, near the identity as Houlsby initializes one: W_down
  /// drawn from a normal of standard deviation init_scale truncated at two standard deviations (redrawn beyond, as
  /// TensorFlow's truncated_normal_initializer in Houlsby's adapter-bert code; seeded by `seed`), and W_up, b_down,
  /// b_up zero. Houlsby's code also draws W_up small; zero here makes a fresh adapter change nothing at all (y = z
  /// exactly, as LoRA's B = 0), and W_down starts learning once W_up has moved. Throws config_error for a
  /// bottleneck < 1 or an init_scale that is negative or not finite.
  void add_adapter(Index bottleneck, unsigned seed, float init_scale = 1e-3f) {
    const char* func = "BottleneckAdapter::add_adapter";
    if (bottleneck < 1) throw config_error(detail::cat(func, ": bottleneck is ", bottleneck, ", expected >= 1"));
    if (!(init_scale >= 0.0f) || !std::isfinite(init_scale))
      throw config_error(detail::cat(func, ": init_scale is ", init_scale, ", expected finite and >= 0"));
    const Index out = out_features();
    Matrix down(bottleneck, out);
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (Index i = 0; i < down.size(); ++i) {
      float v = normal(gen);
      while (std::abs(v) > 2.0f) v = normal(gen);
      down.data()[i] = init_scale * v;
    }
    set_adapter(std::move(down), Vector::Zero(bottleneck), Matrix::Zero(out, bottleneck), Vector::Zero(out));
  }

  /// Sets (adds or replaces) the adapter: down (m, out), down_bias (m), up (out, m), up_bias (out), m >= 1. Throws
  /// shape_error naming the argument, its shape and the expected one.
  void set_adapter(Matrix down, Vector down_bias, Matrix up, Vector up_bias) {
    const char* func = "BottleneckAdapter::set_adapter";
    const Index out = out_features();
    if (down.rows() < 1 || down.cols() != out)
      throw shape_error(detail::cat(func, ": down has shape ", detail::shape_str(down.rows(), down.cols()),
                                    ", expected (m >= 1, ", out, ")"));
    const Index m = down.rows();
    if (down_bias.size() != m)
      throw shape_error(detail::cat(func, ": down_bias has shape ", detail::shape_str(down_bias.size()), ", expected ",
                                    detail::shape_str(m)));
    check_shape(up, out, m, func, "up");
    if (up_bias.size() != out)
      throw shape_error(detail::cat(func, ": up_bias has shape ", detail::shape_str(up_bias.size()), ", expected ",
                                    detail::shape_str(out)));
    down_ = std::move(down);
    down_bias_ = std::move(down_bias);
    up_ = std::move(up);
    up_bias_ = std::move(up_bias);
    repack();
  }

  /// Removes the adapter: the layer computes as Inner again. Idempotent.
  void remove_adapter() noexcept {
    down_ = Matrix();
    down_bias_ = Vector();
    up_ = Matrix();
    up_bias_ = Vector();
    down_t_ = kernels::PackedMatrix();
    up_t_ = kernels::PackedMatrix();
  }

  /// The inner layer's parameters under `prefix` and, with an adapter, "<prefix>adapter.down.weight" (m, out),
  /// "adapter.down.bias" (m), "adapter.up.weight" (out, m), "adapter.up.bias" (out). Writes reach forward().
  void parameters(ParameterList& list, const std::string& prefix) {
    inner_.parameters(list, prefix);
    if (!has_adapter()) return;
    const auto matrix = [&](const char* name, Matrix& m) {
      list.add({prefix + name, {m.rows(), m.cols()}, [&m](float* out) { std::copy_n(m.data(), m.size(), out); },
                [this, &m](const float* in) {
                  std::copy_n(in, m.size(), m.data());
                  repack();
                }});
    };
    const auto vector = [&](const char* name, Vector& v) {  // forward reads the biases as they are stored
      list.add({prefix + name, {v.size()}, [&v](float* out) { std::copy_n(v.data(), v.size(), out); },
                [&v](const float* in) { std::copy_n(in, v.size(), v.data()); }});
    };
    matrix("adapter.down.weight", down_);
    vector("adapter.down.bias", down_bias_);
    matrix("adapter.up.weight", up_);
    vector("adapter.up.bias", up_bias_);
  }

  /// y (n, out) = Inner(x (n, in)) and, with an adapter, + act(z·W_downᵀ + b_down)·W_upᵀ + b_up. The (n, m)
  /// intermediate lives in a buffer of this call: on the stack when n·m ≤ stack_floats, else on the heap.
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    inner_.forward(x, y, ctx);
    if (!has_adapter()) return;
    const Index n = y.rows(), m = bottleneck();
    alignas(64) float stack[stack_floats];
    std::vector<float> heap(n * m > stack_floats ? static_cast<std::size_t>(n * m) : 0);
    float* const hidden = heap.empty() ? stack : heap.data();
    const MatrixView h(hidden, n, m, Eigen::OuterStride<>(m));
    kernels::gemm(cview(y), down_t_, h, down_bias_.data(), /*accumulate=*/false, ctx.threads);  // H = Z·W_downᵀ + b
    Act::apply(hidden, hidden, static_cast<std::size_t>(n * m));                                // A = act(H)
    kernels::gemm(cview(h), up_t_, y, up_bias_.data(), /*accumulate=*/true, ctx.threads);       // Y = Z + A·W_upᵀ + b
  }

  /// The gradients of the inner layer (frozen, i.e. empty, unless unfrozen by name: an adapter trains alone by
  /// default) and of the adapter's W_down (m, out), b_down (m), W_up (out, m), b_up (out); empty = frozen.
  struct Gradients {
    typename Inner::Gradients inner{};
    Matrix down_w;
    Vector down_b;
    Matrix up_w;
    Vector up_b;
  };
  /// Live adapter buffers (when there is an adapter; make them after adding it) and a frozen inner layer.
  Gradients make_gradients() const requires TrainableLinear<Inner> {
    Gradients g;
    if (has_adapter()) {
      const Index m = bottleneck(), out = out_features();
      g.down_w.setZero(m, out);
      g.down_b.setZero(m);
      g.up_w.setZero(out, m);
      g.up_b.setZero(out);
    }
    return g;
  }
  /// The inner layer's gradients and, with an adapter, "adapter.down.weight", "adapter.down.bias",
  /// "adapter.up.weight", "adapter.up.bias", as parameters() names them.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const requires TrainableLinear<Inner> {
    inner_.gradients(list, prefix, g.inner);
    if (!has_adapter()) return;
    const Index m = bottleneck(), out = out_features();
    list.add_matrix(prefix + "adapter.down.weight", g.down_w, m, out);
    list.add_vector(prefix + "adapter.down.bias", g.down_b, m);
    list.add_matrix(prefix + "adapter.up.weight", g.up_w, out, m);
    list.add_vector(prefix + "adapter.up.bias", g.up_b, out);
  }

  /// The backward of forward(x). It does not rely on any forward having run: with an adapter it recomputes
  /// Z = Inner(x) and H = Z·W_downᵀ + b_down from x (one more inner forward per step; the policy interface keeps no
  /// saved state), then, with A = act(H):
  ///   dW_up += dYᵀ·A,  db_up += colsum(dY),  dH = (dY·W_up) ⊙ act′(H),  dW_down += dHᵀ·Z,  db_down += colsum(dH),
  ///   dZ = dY + dH·W_down,
  /// and runs the inner layer's backward from dZ (its gradients only where unfrozen), which writes — or, with
  /// accumulate_dx, adds — dx (n, in); a dx of no columns skips it. Without an adapter it is Inner's backward.
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients& g, const Context& ctx,
                bool accumulate_dx = false) const requires TrainableLinear<Inner> {
    const char* func = "BottleneckAdapter::backward";
    const Index m = bottleneck(), out = out_features();
    if (!has_adapter()) {
      if (detail::live(g.down_w) || detail::live(g.down_b) || detail::live(g.up_w) || detail::live(g.up_b))
        throw shape_error(detail::cat(func, ": adapter gradients were given for a layer without an adapter"));
      inner_.backward(x, dy, dx, g.inner, ctx, accumulate_dx);
      return;
    }
    check_cols(x, in_features(), func, "x");
    check_shape(dy, x.rows(), out, func, "dy");
    if (dx.cols() != 0) check_shape(dx, x.rows(), in_features(), func, "dx");
    detail::check_gradient(func, "adapter.down.weight", g.down_w, m, out);
    detail::check_gradient(func, "adapter.down.bias", g.down_b, m);
    detail::check_gradient(func, "adapter.up.weight", g.up_w, out, m);
    detail::check_gradient(func, "adapter.up.bias", g.up_b, out);
    const Index n = x.rows();
    Matrix z(n, out), h(n, m), a(n, m), dz(n, out);
    inner_.forward(x, view(z), ctx);                                                             // Z
    kernels::gemm(cview(z), down_t_, view(h), down_bias_.data(), /*accumulate=*/false, ctx.threads);  // H
    const auto size = static_cast<std::size_t>(n * m);
    if (detail::live(g.up_w)) {
      Act::apply(h.data(), a.data(), size);  // A
      const Matrix dy_t = dy.transpose();    // (out, n)
      kernels::gemm(cview(dy_t), cview(a), kernels::Transpose::no, view(g.up_w), 1.0f, 1.0f, ctx.threads);
    }
    if (detail::live(g.up_b))
      for (Index r = 0; r < n; ++r) g.up_b += dy.row(r).transpose();
    Matrix& dh = a;  // A is no longer needed: dA = dY·W_up (n, m), then dH = act′(H) ⊙ dA in place
    kernels::gemm(dy, cview(up_), kernels::Transpose::no, view(dh), 1.0f, 0.0f, ctx.threads);
    Act::backward(h.data(), dh.data(), dh.data(), size);
    if (detail::live(g.down_w)) {
      const Matrix dh_t = dh.transpose();  // (m, n)
      kernels::gemm(cview(dh_t), cview(z), kernels::Transpose::no, view(g.down_w), 1.0f, 1.0f, ctx.threads);
    }
    if (detail::live(g.down_b))
      for (Index r = 0; r < n; ++r) g.down_b += dh.row(r).transpose();
    dz = dy;                                                                                      // the skip
    kernels::gemm(cview(dh), cview(down_), kernels::Transpose::no, view(dz), 1.0f, 1.0f, ctx.threads);  // + dH·W_down
    inner_.backward(x, cview(dz), dx, g.inner, ctx, accumulate_dx);
  }

  /// Floats of forward()'s stack buffer for the (n, m) intermediate (8 KB): n·m up to this is not allocated.
  static constexpr Index stack_floats = 2048;

 private:
  /// Packs W_downᵀ (out, m) and W_upᵀ (m, out) for forward()'s products, after any change of the weights.
  void repack() {
    const auto u = [](Index v) { return static_cast<std::size_t>(v); };
    down_t_.repack_transposed(down_.data(), u(down_.rows()), u(down_.cols()), u(down_.cols()));
    up_t_.repack_transposed(up_.data(), u(up_.rows()), u(up_.cols()), u(up_.cols()));
  }

  Inner inner_{};
  Matrix down_;      // W_down (m, out); empty: no adapter
  Vector down_bias_;  // (m)
  Matrix up_;        // W_up (out, m)
  Vector up_bias_;   // (out)
  kernels::PackedMatrix down_t_, up_t_;  // W_downᵀ, W_upᵀ in micro-kernel panels
};

/// Whether a Llama's tied classifier may read the embedding itself (make_llama builds no classifier `Lin` then):
/// as Inner's. The trait describes the layer as a model builds it — with no adapter, where BottleneckAdapter<Inner>
/// computes bit for bit as Inner — and a tied classifier that reads the embedding is never a BottleneckAdapter
/// object, so no adapter can be put on it (Houlsby adapts the sublayers' outputs, not the head). With `false`, a
/// Llama<…, BottleneckAdapter<Dense>> of a tied checkpoint would get an untied copy of the embedding as its
/// classifier, training differently from its Dense twin; the same choice as LoRA<Inner>'s.
template <typename Inner, typename Act>
inline constexpr bool exact_float_weights<BottleneckAdapter<Inner, Act>> = exact_float_weights<Inner>;

static_assert(LinearPolicy<BottleneckAdapter<Dense>>);
static_assert(TrainableLinear<BottleneckAdapter<Dense>>);

}  // namespace polyformer
