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

#include "polyformer/attention/full.hpp"
#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
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
    for (auto [name, m] : {std::pair{"E", &e_}, std::pair{"F", &f_}}) {
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
      ensure_shape(ws.keys, n_k, kvd);
      ensure_shape(ws.values, n_k, kvd);
      view(ws.keys) = k;
      view(ws.values) = v;
      for (Index j = 0; j < n_k; ++j)
        if (j >= valid || (mask.key_padding && mask.key_padding[j] != 0.0f)) {
          ws.keys.row(j).setZero();
          ws.values.row(j).setZero();
        }
    }
    const ConstMatrixView kk = padded ? cview(ws.keys) : k, vv = padded ? cview(ws.values) : v;
    // Projected keys and values, (k, heads'·d) with heads' = kv heads (shared E) or query heads (per head).
    const Index out_heads = proj_heads == 1 ? s.n_kv_heads : s.n_heads;
    ensure_shape(ws.proj_k, k_, out_heads * dh);
    ensure_shape(ws.proj_v, k_, out_heads * dh);
    const int t = effective_threads(ctx.threads);
    parallel_for(2 * out_heads, std::min<int>(t, static_cast<int>(2 * out_heads)), [&](Index task, int) {
      const Index oh = task / 2, src_head = proj_heads == 1 ? oh : s.kv_head(oh), row0 = proj_heads == 1 ? 0 : oh * k_;
      const bool is_key = task % 2 == 0;
      const Matrix& p = is_key ? *e_ : *f_;
      // In slices of the sequence, accumulated: each slice's product stays in L2 and on the micro-kernels
      // (one product over all n would take a BLAS call that repacks both operands).
      MatrixView dst = block(view(is_key ? ws.proj_k : ws.proj_v), 0, oh * dh, k_, dh);
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
    attention_.forward(projected, q, cview(ws.proj_k), cview(ws.proj_v), AttentionMask{}, out, ws.full, ctx);
  }

 private:
  static constexpr Index projection_slice = 512;
  Index k_ = 0;
  std::shared_ptr<const Matrix> e_, f_;
  FullAttention attention_;  // exact softmax over the k projected keys
};

static_assert(SpelledAttention<Linformer>);

}  // namespace polyformer
