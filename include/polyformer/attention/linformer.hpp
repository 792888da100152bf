#pragma once
/// \file Linformer (Wang et al. 2020, §4): keys and values are projected along the sequence by learned
/// E, F (k, n_max) — K' = E·K, V' = F·V, (k, d) each — and softmax attention runs over the k projected
/// keys: O(n·k·d) time. A sequence shorter than n_max uses the leading n columns of E and F. Padded keys
/// are zero rows before the projection. Bidirectional only: a causal mask cannot be honoured.
///
/// Sharing (the paper's §4 "parameter sharing"): E and F of shape (k, n_max) are shared by the heads
/// (headwise); of shape (heads·k, n_max) head h uses rows h·k.. (none); key_value_shared() uses E for both;
/// and layerwise sharing is several layers' policies holding the same matrices (std::shared_ptr).
///
/// The object holds only k and the projections (read through `const`); the zeroed keys and values and the
/// projected ones live in a Workspace of the caller's.

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"

namespace polyformer {

class Linformer : public PerCallWorkspace<Linformer> {
 public:
  using PerCallWorkspace<Linformer>::forward;

  /// Scratch of one caller: keys and values with padded rows zeroed, their projections, and the attention's.
  struct Workspace {
    Matrix keys, values;            // (n_k, kv_heads·d): only when keys are padded
    Matrix proj_k, proj_v;          // (k, heads'·d)
    FullAttention::Workspace full;  // the softmax over the projected keys
    Matrix grad_proj_k, grad_proj_v;    // backward: (k, heads'·d)
    std::vector<Matrix> grad_inputs_t;  // backward: keys' and values' (d, n_k + k) scratch
    std::vector<Matrix> shared_grads;   // backward with E = F: the keys' and the values' part of its gradient
  };

  static constexpr bool supports_causal = false;
  static constexpr const char* name = "linformer";

  // The spelling (attention/spelling.hpp): "linformer:K", K the projected length; the projections are random.
  static constexpr std::string_view spelling_form = "linformer:K";
  static constexpr std::string_view example_spelling = "linformer:256";
  /// Options: "n_max" (an integer >= 1, required), the length of the random projections, shared by the heads,
  /// and their "seed" (an integer, 1 by default).
  static Linformer from_spelling(const AttentionSpelling& spelling, const AttentionOptions& options) {
    const Index k = spelling.positive(0), n_max = options.integer("n_max", 0);
    if (n_max < 1)
      throw config_error(detail::cat("Linformer::from_spelling: '", spelling.text(),
                                     "' needs n_max >= 1 (the length of its random projections), found ", n_max));
    return random(k, n_max, 1, static_cast<std::uint64_t>(options.integer("seed", 1)));
  }
  std::string spelling() const { return detail::cat(name, ':', k_); }

  /// Unconfigured: forward throws until projections are given.
  Linformer() = default;
  /// Projections of k rows per head: e and f are (k, n_max), shared by the heads, or (heads·k, n_max).
  Linformer(Index k, Matrix e, Matrix f)
      : Linformer(k, std::make_shared<const Matrix>(std::move(e)), std::make_shared<const Matrix>(std::move(f))) {}
  /// Layerwise sharing: the same matrices in several layers.
  Linformer(Index k, std::shared_ptr<const Matrix> e, std::shared_ptr<const Matrix> f)
      : k_(k), e_(std::move(e)), f_(std::move(f)) {
    const char* func = "Linformer";
    if (k < 1) throw config_error(detail::cat(func, ": k is ", k, ", expected >= 1"));
    if (!e_ || !f_) throw config_error(detail::cat(func, ": a projection is null"));
    for (const Matrix* m : {e_.get(), f_.get()})
      if (m->rows() % k != 0 || m->rows() == 0 || m->cols() < 1)
        throw shape_error(detail::cat(func, ": projection has shape ", detail::shape_str(m->rows(), m->cols()),
                                      ", expected (k, n_max) or (heads·k, n_max) with k = ", k));
    if (e_->cols() != f_->cols() || e_->rows() != f_->rows())
      throw shape_error(detail::cat(func, ": E is ", detail::shape_str(e_->rows(), e_->cols()), " and F is ",
                                    detail::shape_str(f_->rows(), f_->cols()), ", expected equal shapes"));
  }
  /// Key-value sharing: F = E.
  static Linformer key_value_shared(Index k, Matrix e) {
    auto shared = std::make_shared<const Matrix>(std::move(e));
    return Linformer(k, shared, shared);
  }
  /// Random projections N(0, 1/k) (the initialization of a model to be trained, and of benchmarks), shared by
  /// the heads when heads = 1.
  static Linformer random(Index k, Index n_max, Index heads = 1, std::uint64_t seed = 1) {
    if (k < 1 || n_max < 1 || heads < 1)
      throw config_error(detail::cat("Linformer::random: k ", k, ", n_max ", n_max, ", heads ", heads, ", expected all >= 1"));
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(k)));
    Matrix e(heads * k, n_max), f(heads * k, n_max);
    for (Matrix* m : {&e, &f})
      for (Index i = 0; i < m->size(); ++i) m->data()[i] = normal(rng);
    return Linformer(k, std::move(e), std::move(f));
  }

  Index k() const noexcept { return k_; }
  /// The longest sequence the projections cover.
  Index n_max() const noexcept { return e_ ? e_->cols() : 0; }
  const std::shared_ptr<const Matrix>& e() const noexcept { return e_; }
  const std::shared_ptr<const Matrix>& f() const noexcept { return f_; }

  /// The learned projections "E" and "F" (heads'·k, n_max). Writing one gives this layer its own copy (projections
  /// shared between layers stop being shared).
  void parameters(ParameterList& list, const std::string& prefix) {
    for (const auto& entry : {std::pair{"E", &e_}, std::pair{"F", &f_}}) {
      const std::string name = entry.first;
      auto* const m = entry.second;  // named, not bound: the lambdas below capture it
      if (!*m) continue;
      const Index rows = (*m)->rows(), cols = (*m)->cols();
      list.add({prefix + name, {rows, cols}, [m](float* out) { std::copy_n((*m)->data(), (*m)->size(), out); },
                [m, rows, cols](const float* in) {
                  *m = std::make_shared<const Matrix>(Eigen::Map<const Matrix>(in, rows, cols));
                }});
    }
  }

  /// out (n_q, heads·d) from q (n_q, heads·d), k and v (n_k, kv_heads·d), n_k ≤ n_max. Key padding and key
  /// lengths are honoured; causal and additive masks throw (they have no meaning over projected keys).
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    const AttentionShape projected = project("Linformer::forward", s, k, v, mask, ws.proj_k, ws.proj_v, ws, ctx);
    attention_.forward(projected, q, cview(ws.proj_k), cview(ws.proj_v), AttentionMask{}, out, ws.full, ctx);
  }

  /// What backward needs: the projected keys and values and the softmax's saved statistics.
  struct Saved : SavedForward {
    Matrix proj_k, proj_v;           ///< (k, heads'·d): E·K and F·V
    FullAttention::Saved attention;  ///< the softmax over the projected keys
  };

  /// The gradients of E and F, shaped as they are; empty = frozen. With key_value_shared(), both hold dE + dF (so an
  /// optimizer stepping both keeps them equal).
  struct Gradients {
    Matrix e, f;
  };

  Gradients make_gradients() const {
    Gradients g;
    if (e_) g.e = Matrix::Zero(e_->rows(), e_->cols());
    if (f_) g.f = Matrix::Zero(f_->rows(), f_->cols());
    return g;
  }

  /// The gradients of "E" and "F", as parameters() names them.
  void gradients(GradientList& list, const std::string& prefix, Gradients& g) const {
    if (e_) list.add_matrix(prefix + "E", g.e, e_->rows(), e_->cols());
    if (f_) list.add_matrix(prefix + "F", g.f, f_->rows(), f_->cols());
  }

  /// Throws shape_error naming `func` unless g's live buffers are shaped as E and F.
  void check_gradients(const char* func, const Gradients& g) const {
    if (!e_) return;
    detail::check_gradient(func, "E", g.e, e_->rows(), e_->cols());
    detail::check_gradient(func, "F", g.f, f_->rows(), f_->cols());
  }

  void forward_train(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, Saved& saved, Workspace& ws, const Context& ctx) const {
    const AttentionShape projected =
        project("Linformer::forward_train", s, k, v, mask, saved.proj_k, saved.proj_v, ws, ctx);
    attention_.forward_train(projected, q, cview(saved.proj_k), cview(saved.proj_v), AttentionMask{}, out,
                             saved.attention, ws.full, ctx);
    saved.record();
  }

  /// The backward of forward_train with E and F frozen: dq (n_q, heads·d), dk and dv (n_k, kv_heads·d).
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Workspace& ws, const Context& ctx) const {
    Gradients frozen;
    backward(s, q, k, v, mask, out, dout, saved, dq, dk, dv, frozen, ws, ctx);
  }

  /// The backward of forward_train: dq (n_q, heads·d), dk and dv (n_k, kv_heads·d) written from dout (n_q, heads·d)
  /// given the same q, k, v, mask and the output `out`, and E's and F's gradients added into g (those live). Padded
  /// keys get zero gradients (they were zeroed before the projection). Uses `saved` once (saved.keep: again).
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Gradients& g, Workspace& ws, const Context& ctx) const {
    const char* func = "Linformer::backward";
    saved.require_held(func);
    detail::check_attention_grads(func, s, q, k, v, out, dout, dq, dk, dv);
    check_gradients(func, g);
    const AttentionShape projected = check_call(func, s, k, mask);
    const Index n_k = k.rows(), dh = s.head_dim, out_heads = projected.n_kv_heads;
    check_shape(saved.proj_k, k_, out_heads * dh, func, "the saved projected keys");
    check_shape(saved.proj_v, k_, out_heads * dh, func, "the saved projected values");
    saved.attention.keep = saved.keep;
    ensure_shape(ws.grad_proj_k, k_, out_heads * dh);
    ensure_shape(ws.grad_proj_v, k_, out_heads * dh);
    attention_.backward(projected, q, cview(saved.proj_k), cview(saved.proj_v), AttentionMask{}, out, dout,
                        saved.attention, dq, view(ws.grad_proj_k), view(ws.grad_proj_v), ws.full, ctx);
    saved.take(func);
    const auto padded = padded_inputs(s, k, v, mask, ws);  // named, not bound: lambdas below capture them
    const ConstMatrixView kk = padded.first, vv = padded.second;
    const Index proj_heads = e_->rows() / k_;
    // dK = Eᵀ·dK′ and dE += dK′·Kᵀ per projected head (keys with E, values with F); the two run side by side.
    dk.setZero();
    dv.setZero();
    if (static_cast<int>(ws.grad_inputs_t.size()) < 2) ws.grad_inputs_t.resize(2);
    // One matrix for keys and values (key_value_shared): both parts are summed apart, then added to each live buffer.
    const bool one_matrix = e_ == f_ && (detail::live(g.e) || detail::live(g.f));
    if (one_matrix) {
      ws.shared_grads.resize(2);
      for (Matrix& m : ws.shared_grads) m.setZero(e_->rows(), e_->cols());
    }
    parallel_for(2, std::min(2, effective_threads(ctx.threads)), [&](Index task, int) {
      const bool is_key = task == 0;
      const Matrix& p = is_key ? *e_ : *f_;
      Matrix& grad_p = one_matrix ? ws.shared_grads[std::size_t(task)] : is_key ? g.e : g.f;
      const ConstMatrixView src = is_key ? kk : vv, grad_proj = cview(is_key ? ws.grad_proj_k : ws.grad_proj_v);
      MatrixView grad_src = is_key ? dk : dv;
      Matrix& tmp = ws.grad_inputs_t[std::size_t(task)];
      ensure_shape(tmp, dh, n_k + k_);  // (d, n_k) of the inputs' gradient, then (d, k) of dK′ᵀ
      for (Index oh = 0; oh < out_heads; ++oh) {
        const Index src_head = proj_heads == 1 ? oh : s.kv_head(oh), row0 = proj_heads == 1 ? 0 : oh * k_;
        const ConstMatrixView gp = block(grad_proj, 0, oh * dh, k_, dh);
        if (detail::live(grad_p))  // dE rows (k, n_k) += dK′ (k, d) · Kᵀ
          kernels::gemm(gp, block(src, 0, src_head * dh, n_k, dh), kernels::Transpose::yes,
                        block(view(grad_p), row0, 0, k_, n_k), 1.0f, 1.0f, 1);
        MatrixView gpt = block(view(tmp), 0, n_k, dh, k_), gin = block(view(tmp), 0, 0, dh, n_k);
        kernels::transpose(gp.data(), gp.outerStride(), k_, dh, gpt.data(), gpt.outerStride());
        kernels::gemm(cview(gpt), block(view(p), row0, 0, k_, n_k), kernels::Transpose::no, gin, 1.0f, 0.0f, 1);
        block(grad_src, 0, src_head * dh, n_k, dh) += gin.transpose();  // (n_k, d) += (dK′ᵀ·E)ᵀ
      }
    });
    if (one_matrix) {
      ws.shared_grads[0] += ws.shared_grads[1];
      if (detail::live(g.e)) g.e += ws.shared_grads[0];
      if (detail::live(g.f)) g.f += ws.shared_grads[0];
    }
    // Padded keys were zero rows before the projection: no gradient reaches them.
    const Index valid = std::min(n_k, mask.n_valid_keys);
    for (Index j = 0; j < n_k; ++j)
      if (j >= valid || (mask.key_padding && mask.key_padding[j] != 0.0f)) {
        block(dk, j, 0, 1, dk.cols()).setZero();
        block(dv, j, 0, 1, dv.cols()).setZero();
      }
  }

 private:
  /// Checks a call's projections, masks and length; returns the shape of the softmax over the projected keys.
  AttentionShape check_call(const char* func, const AttentionShape& s, ConstMatrixView k, const AttentionMask& mask) const {
    if (!e_) throw config_error(detail::cat(func, ": no projections (a default-constructed Linformer)"));
    if (mask.causal)
      throw config_error(detail::cat(func, ": a causal mask, expected none (Linformer is bidirectional only)"));
    if (mask.additive) throw config_error(detail::cat(func, ": an additive mask, expected none"));
    if (k.rows() > n_max()) throw shape_error(detail::cat(func, ": ", k.rows(), " keys, expected at most n_max ", n_max()));
    const Index proj_heads = e_->rows() / k_;
    if (proj_heads != 1 && proj_heads != s.n_heads)
      throw shape_error(detail::cat(func, ": projections for ", proj_heads, " heads, expected 1 or ", s.n_heads));
    AttentionShape projected = s;
    projected.n_kv_heads = proj_heads == 1 ? s.n_kv_heads : s.n_heads;
    return projected;
  }

  /// Keys and values with padded rows zeroed (copies in ws only when some key is padded).
  std::pair<ConstMatrixView, ConstMatrixView> padded_inputs(const AttentionShape& s, ConstMatrixView k, ConstMatrixView v,
                                                            const AttentionMask& mask, Workspace& ws) const {
    const Index n_k = k.rows(), kvd = s.n_kv_heads * s.head_dim;
    const Index valid = std::min(n_k, mask.n_valid_keys);
    if (valid >= n_k && !mask.key_padding) return {k, v};
    ensure_shape(ws.keys, n_k, kvd);
    ensure_shape(ws.values, n_k, kvd);
    view(ws.keys) = k;
    view(ws.values) = v;
    for (Index j = 0; j < n_k; ++j)
      if (j >= valid || (mask.key_padding && mask.key_padding[j] != 0.0f)) {
        ws.keys.row(j).setZero();
        ws.values.row(j).setZero();
      }
    return {cview(ws.keys), cview(ws.values)};
  }

  /// proj_k, proj_v (k, heads'·d) = E·K, F·V with padded keys zeroed; returns the projected attention's shape.
  AttentionShape project(const char* func, const AttentionShape& s, ConstMatrixView k, ConstMatrixView v,
                         const AttentionMask& mask, Matrix& proj_k, Matrix& proj_v, Workspace& ws,
                         const Context& ctx) const {
    const AttentionShape projected = check_call(func, s, k, mask);
    const Index n_k = k.rows(), dh = s.head_dim, out_heads = projected.n_kv_heads, proj_heads = e_->rows() / k_;
    const auto padded = padded_inputs(s, k, v, mask, ws);  // named, not bound: lambdas below capture them
    const ConstMatrixView kk = padded.first, vv = padded.second;
    ensure_shape(proj_k, k_, out_heads * dh);
    ensure_shape(proj_v, k_, out_heads * dh);
    const int t = effective_threads(ctx.threads);
    parallel_for(2 * out_heads, std::min<int>(t, static_cast<int>(2 * out_heads)), [&](Index task, int) {
      const Index oh = task / 2, src_head = proj_heads == 1 ? oh : s.kv_head(oh), row0 = proj_heads == 1 ? 0 : oh * k_;
      const bool is_key = task % 2 == 0;
      const Matrix& p = is_key ? *e_ : *f_;
      // In slices of the sequence, accumulated: each slice's product stays in L2 and on the micro-kernels
      // (one product over all n would take a BLAS call that repacks both operands).
      MatrixView dst = block(view(is_key ? proj_k : proj_v), 0, oh * dh, k_, dh);
      const ConstMatrixView src = is_key ? kk : vv;
      if (n_k == 0) dst.setZero();
      for (Index j0 = 0; j0 < n_k; j0 += projection_slice) {
        const Index nj = std::min(projection_slice, n_k - j0);
        kernels::gemm(block(view(p), row0, j0, k_, nj), block(src, j0, src_head * dh, nj, dh), kernels::Transpose::no,
                      dst, 1.0f, j0 == 0 ? 0.0f : 1.0f, 1);
      }
    });
    return projected;
  }

  static constexpr Index projection_slice = 512;
  Index k_ = 0;
  std::shared_ptr<const Matrix> e_, f_;
  FullAttention attention_;  // exact softmax over the k projected keys
};

static_assert(SpelledAttention<Linformer> && TrainableAttention<Linformer> && ParametrizedAttention<Linformer>);

}  // namespace polyformer
