#pragma once
/// \file Linformer (Wang et al. 2020, §4): keys and values are projected along the sequence by learned
/// E, F (k, n_max) — K' = E·K, V' = F·V, (k, d) each — and softmax attention runs over the k projected
/// keys: O(n·k·d) time. A sequence shorter than n_max uses the leading n columns of E and F. Padded keys
/// are zero rows before the projection. Bidirectional only: a causal mask cannot be honoured.
///
/// Sharing (the paper's §4 "parameter sharing"): E and F of shape (k, n_max) are shared by the heads
/// (headwise); of shape (heads·k, n_max) head h uses rows h·k.. (none); key_value_shared() uses E for both;
/// and layerwise sharing is several layers' policies holding the same matrices (std::shared_ptr).

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <utility>

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/gemm.hpp"

namespace polyformer {

class Linformer {
 public:
  static constexpr bool supports_causal = false;
  static constexpr const char* name = "linformer";

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

  /// out (n_q, heads·d) from q (n_q, heads·d), k and v (n_k, kv_heads·d), n_k ≤ n_max. Key padding and key
  /// lengths are honoured; causal and additive masks throw (they have no meaning over projected keys).
  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, const Context& ctx) {
    const char* func = "Linformer::forward";
    if (!e_) throw config_error(detail::cat(func, ": no projections (a default-constructed Linformer)"));
    if (mask.causal)
      throw config_error(detail::cat(func, ": a causal mask, expected none (Linformer is bidirectional only)"));
    if (mask.additive) throw config_error(detail::cat(func, ": an additive mask, expected none"));
    const Index n_k = k.rows(), dh = s.head_dim, kvd = s.n_kv_heads * dh;
    if (n_k > n_max())
      throw shape_error(detail::cat(func, ": ", n_k, " keys, expected at most n_max ", n_max()));
    const Index proj_heads = e_->rows() / k_;
    if (proj_heads != 1 && proj_heads != s.n_heads)
      throw shape_error(detail::cat(func, ": projections for ", proj_heads, " heads, expected 1 or ", s.n_heads));
    // Keys and values with padded rows zeroed: (n_k, kv_heads·d).
    const Index valid = std::min(n_k, mask.n_valid_keys);
    const bool padded = valid < n_k || mask.key_padding;
    if (padded) {
      ensure_shape(keys_, n_k, kvd);
      ensure_shape(values_, n_k, kvd);
      view(keys_) = k;
      view(values_) = v;
      for (Index j = 0; j < n_k; ++j)
        if (j >= valid || (mask.key_padding && mask.key_padding[j] != 0.0f)) {
          keys_.row(j).setZero();
          values_.row(j).setZero();
        }
    }
    const ConstMatrixView kk = padded ? cview(keys_) : k, vv = padded ? cview(values_) : v;
    // Projected keys and values, (k, heads'·d) with heads' = kv heads (shared E) or query heads (per head).
    const Index out_heads = proj_heads == 1 ? s.n_kv_heads : s.n_heads;
    ensure_shape(proj_k_, k_, out_heads * dh);
    ensure_shape(proj_v_, k_, out_heads * dh);
    const int t = effective_threads(ctx.threads);
    parallel_for(2 * out_heads, std::min<int>(t, static_cast<int>(2 * out_heads)), [&](Index task, int) {
      const Index oh = task / 2, src_head = proj_heads == 1 ? oh : s.kv_head(oh), row0 = proj_heads == 1 ? 0 : oh * k_;
      const bool is_key = task % 2 == 0;
      const Matrix& p = is_key ? *e_ : *f_;
      // In slices of the sequence, accumulated: each slice's product stays in L2 and on the micro-kernels
      // (one product over all n would take a BLAS call that repacks both operands).
      MatrixView dst = block(view(is_key ? proj_k_ : proj_v_), 0, oh * dh, k_, dh);
      const ConstMatrixView src = is_key ? kk : vv;
      if (n_k == 0) dst.setZero();
      for (Index j0 = 0; j0 < n_k; j0 += projection_slice) {
        const Index nj = std::min(projection_slice, n_k - j0);
        kernels::gemm(block(view(p), row0, j0, k_, nj), block(src, j0, src_head * dh, nj, dh), kernels::Transpose::no,
                      dst, 1.0f, j0 == 0 ? 0.0f : 1.0f, 1);
      }
    });
    AttentionShape projected = s;
    projected.n_kv_heads = out_heads;
    attention_.forward(projected, q, cview(proj_k_), cview(proj_v_), AttentionMask{}, out, ctx);
  }

 private:
  static constexpr Index projection_slice = 512;
  Index k_ = 0;
  std::shared_ptr<const Matrix> e_, f_;
  Matrix keys_, values_, proj_k_, proj_v_;
  FullAttention attention_;  // exact softmax over the k projected keys
};

static_assert(AttentionPolicy<Linformer>);

}  // namespace polyformer
