#pragma once
/// \file Kernelized attention: softmax(q·k) is replaced by φ(q)·φ(k), so out_i = φ(q_i)ᵀ S / φ(q_i)ᵀ z with
/// S = Σ_j φ(k_j) v_jᵀ (features × d) and z = Σ_j φ(k_j): O(n·M·d) time, O(M·d) state.
/// - LinearAttention: φ = elu + 1 (Katharopoulos et al. 2020, §3.2), M = d, no score scale.
/// - Performer: FAVOR+ positive orthogonal random features (Choromanski et al. 2020, §2.3–2.4):
///   φ(x) = exp(W·x′ − |x′|²/2)/√M with x′ = x·√scale (= x·d^(−1/4)), W (M, d) drawn in orthogonal blocks,
///   each row rescaled to the norm of a Gaussian vector. An unbiased estimate of softmax attention.
/// Bidirectional through the sums over all keys; causal through prefix sums, computed chunk by chunk (inside a
/// chunk the masked product φ(Q)·φ(K)ᵀ, across chunks the running S and z), which is also the recurrent
/// decoding state (KernelState). FAVOR+'s numerical stabilizer: a query's exponents are shifted by their max
/// (a per-query factor cancels in the ratio); keys share one running shift, and S and z are rescaled when it
/// grows, so nothing overflows and the result is exact arithmetic for the same φ.
/// Training: forward_train keeps each query's normalizer φ(q_i)ᵀz, and the keys' shifts (causal, per chunk) or S and
/// z themselves (bidirectional); backward recomputes the features from q and k with the same shifts. The shifts are
/// positive factors that cancel in the ratio, so they take no gradient; W is fixed and takes none either.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/reduce.hpp"
#include "polyformer/kernels/transpose.hpp"

namespace polyformer {

/// The recurrent decoding state of kernelized attention: per kv head, S (M, d), z (M) and the keys' shift.
class KernelState {
 public:
  KernelState() = default;
  KernelState(Index n_kv_heads, Index features, Index head_dim)
      : n_kv_heads_(n_kv_heads), features_(features), head_dim_(head_dim) {
    if (n_kv_heads < 1 || features < 1 || head_dim < 1)
      throw config_error(detail::cat("KernelState: kv heads ", n_kv_heads, ", features ", features, ", head_dim ",
                                     head_dim, ", expected all >= 1"));
    sums_ = Matrix::Zero(n_kv_heads * features, head_dim);
    norms_ = Matrix::Zero(n_kv_heads, features);
    shift_.assign(std::size_t(n_kv_heads), -std::numeric_limits<float>::infinity());
  }
  Index n_kv_heads() const noexcept { return n_kv_heads_; }
  Index features() const noexcept { return features_; }
  Index head_dim() const noexcept { return head_dim_; }
  /// Positions folded in since the last clear().
  Index size() const noexcept { return size_; }
  void clear() noexcept {
    sums_.setZero();
    norms_.setZero();
    std::fill(shift_.begin(), shift_.end(), -std::numeric_limits<float>::infinity());
    size_ = 0;
  }

  MatrixView sums(Index g) { return block(view(sums_), g * features_, 0, features_, head_dim_); }  // (M, d)
  float* norms(Index g) { return norms_.data() + g * features_; }                                   // (M)
  float& shift(Index g) { return shift_[std::size_t(g)]; }
  void advance(Index n) noexcept { size_ += n; }

 private:
  Index n_kv_heads_ = 0, features_ = 0, head_dim_ = 0, size_ = 0;
  Matrix sums_;   // (kv_heads·M, d): Σ φ(k_j) v_jᵀ
  Matrix norms_;  // (kv_heads, M): Σ φ(k_j)
  std::vector<float> shift_;  // (kv_heads): the key exponents' shift (exponential features only)
};

/// φ(x) = elu(x) + 1.
struct EluPlusOneFeatures {
  static constexpr bool exponential = false;
  static constexpr const char* name = "linear";
  // The spelling of LinearAttention (attention/spelling.hpp): "linear", no arguments.
  static constexpr std::string_view spelling_form = "linear";
  static constexpr std::string_view example_spelling = "linear";
  /// Reads no options.
  static EluPlusOneFeatures from_spelling(const AttentionSpelling&, const AttentionOptions&) { return {}; }
  std::string spelling() const { return name; }
  struct Projection {};  // nothing drawn
  struct Workspace {};
  Index features(Index head_dim) const noexcept { return head_dim; }
  void prepare(Index) {}
  void check(Index) const noexcept {}
  Projection projection_for(Index, Workspace&) const noexcept { return {}; }
  /// phi (n, M) = φ(q) for q (n, d).
  void map_queries(ConstMatrixView q, MatrixView phi, float, const Projection&) const {
    for (Index i = 0; i < q.rows(); ++i)
      kernels::elu_plus_one(q.data() + i * q.outerStride(), phi.data() + i * phi.outerStride(), std::size_t(q.cols()));
  }
  /// phi_t (M, n) = φ(k)ᵀ for the keys transposed, kt (d, n); columns whose bias is −inf (padded keys) zero.
  void map_keys_t(ConstMatrixView kt, const float* bias, MatrixView phi_t, float, const Projection&) const {
    const Index n = kt.cols();
    for (Index f = 0; f < kt.rows(); ++f)
      kernels::elu_plus_one(kt.data() + f * kt.outerStride(), phi_t.data() + f * phi_t.outerStride(), std::size_t(n));
    for (Index j = 0; j < n; ++j)
      if (bias[j] == -std::numeric_limits<float>::infinity()) phi_t.col(j).setZero();
  }
  /// dx (n, d) from dphi (n, M = d), the gradient of phi = φ(x) for rows x (n, d): dx = dphi ⊙ φ′(x), where
  /// φ′ = 1 above 0 and e^x = φ(x) at or below it. Serves queries and keys alike (a padded key's zeroed row of phi
  /// does not zero its gradient here: the caller does).
  void query_grad(ConstMatrixView x, ConstMatrixView phi, MatrixView dphi, MatrixView dx, float,
                  const Projection&) const {
    for (Index i = 0; i < x.rows(); ++i) {
      const float* xi = x.data() + i * x.outerStride();
      const float* pi = phi.data() + i * phi.outerStride();
      const float* gi = dphi.data() + i * dphi.outerStride();
      float* di = dx.data() + i * dx.outerStride();
      for (Index f = 0; f < x.cols(); ++f) di[f] = xi[f] > 0.0f ? gi[f] : gi[f] * pi[f];
    }
  }
  /// The same for keys.
  void key_grad(ConstMatrixView x, ConstMatrixView phi, MatrixView dphi, MatrixView dx, float scale,
                const Projection& p) const {
    query_grad(x, phi, dphi, dx, scale, p);
  }
};

/// FAVOR+ positive random features for the head size: set explicitly, drawn into the object by prepare or
/// redraw, or else drawn by the call that needs them into the caller's Workspace (the same W: a draw depends
/// only on M, d, the seed and orthogonality).
class PositiveRandomFeatures {
 public:
  static constexpr bool exponential = true;
  static constexpr const char* name = "performer";
  // The spelling of Performer (attention/spelling.hpp): "performer:M", M the random features.
  static constexpr std::string_view spelling_form = "performer:M";
  static constexpr std::string_view example_spelling = "performer:256";
  /// Options: "seed" (an integer, 1 by default) of the draw of W.
  static PositiveRandomFeatures from_spelling(const AttentionSpelling& spelling, const AttentionOptions& options) {
    return PositiveRandomFeatures(spelling.positive(0), static_cast<std::uint64_t>(options.integer("seed", 1)));
  }
  std::string spelling() const { return detail::cat(name, ':', m_); }

  /// W and its transpose for one head size.
  struct Projection {
    Matrix w;   // (M, d)
    Matrix wt;  // (d, M): W transposed, for the queries' product
  };
  /// A caller's draw of W, for the objects that hold none of the head size.
  // Drawn here, not lazily into the object: forward is const, and a draw depends only on (M, d, seed, orthogonal).
  struct Workspace {
    Projection drawn;
    std::uint64_t seed = 0;  // the seed and orthogonality `drawn` was drawn with
    bool orthogonal = true;
  };

  explicit PositiveRandomFeatures(Index n_features = 256, std::uint64_t seed = 1, bool orthogonal = true)
      : m_(n_features), seed_(seed), orthogonal_(orthogonal) {
    if (n_features < 1) throw config_error(detail::cat("Performer: features is ", n_features, ", expected >= 1"));
  }
  Index features(Index) const noexcept { return m_; }
  std::uint64_t seed() const noexcept { return seed_; }
  /// W (M, d) the object holds (empty before set_projection, prepare(head_dim) or redraw(head_dim); a
  /// forward's own draw stays in its workspace).
  const Matrix& projection() const noexcept { return own_.w; }
  /// Uses the given W (M, d) instead of a draw.
  void set_projection(Matrix w) {
    if (w.rows() < 1 || w.cols() < 1) throw shape_error("Performer::set_projection: W is empty, expected (M, d)");
    m_ = w.rows();
    own_.w = std::move(w);
    own_.wt = own_.w.transpose();
    fixed_ = true;
  }
  /// Draws a new W for head size d (with `seed`) into the object.
  void redraw(Index head_dim, std::uint64_t seed) {
    seed_ = seed;
    fixed_ = false;
    draw(head_dim, own_);
  }
  /// Draws W for head size d into the object unless it holds one of that size.
  void prepare(Index head_dim) {
    if (holds(head_dim)) return;
    check(head_dim);
    draw(head_dim, own_);
  }
  /// Throws if W was set explicitly with another shape than (M, head_dim).
  void check(Index head_dim) const {
    if (fixed_ && !holds(head_dim))
      throw shape_error(detail::cat("Performer: W is ", detail::shape_str(own_.w.rows(), own_.w.cols()), ", expected (",
                                    m_, ", ", head_dim, ") for head size ", head_dim));
  }
  /// The W for head size d: the object's if it holds one of that size, else the draw kept in ws (drawn anew only
  /// when ws holds none for this M, d, seed and orthogonality).
  const Projection& projection_for(Index head_dim, Workspace& ws) const {
    if (holds(head_dim)) return own_;
    check(head_dim);
    if (ws.drawn.w.rows() != m_ || ws.drawn.w.cols() != head_dim || ws.seed != seed_ || ws.orthogonal != orthogonal_) {
      draw(head_dim, ws.drawn);
      ws.seed = seed_;
      ws.orthogonal = orthogonal_;
    }
    return ws.drawn;
  }
  /// phi (n, M) ∝ φ(q) (each row scaled by its own positive constant, which cancels).
  void map_queries(ConstMatrixView q, MatrixView phi, float scale, const Projection& p) const {
    kernels::gemm(q, cview(p.wt), kernels::Transpose::no, phi, std::sqrt(scale), 0.0f, 1);
    for (Index i = 0; i < phi.rows(); ++i) {
      float* row = phi.data() + i * phi.outerStride();
      const float m = kernels::reduce_max(row, std::size_t(phi.cols()));
      kernels::exp_shifted_sum(row, std::size_t(phi.cols()), m);
    }
  }
  /// phi_t (M, n) = the exponents W·k′ + bias for the keys transposed, kt (d, n), with bias_j = −|k′_j|²/2
  /// (−inf for a padded key); the caller shifts and exponentiates.
  void map_keys_t(ConstMatrixView kt, const float* bias, MatrixView phi_t, float scale, const Projection& p) const {
    kernels::gemm(cview(p.w), kt, kernels::Transpose::no, phi_t, std::sqrt(scale), 0.0f, 1);
    for (Index f = 0; f < phi_t.rows(); ++f)
      kernels::add(bias, phi_t.data() + f * phi_t.outerStride(), std::size_t(phi_t.cols()));
  }
  /// dq (n, d) from dphi (n, M), the gradient of the query features phi (n, M) that map_queries made. Those are
  /// e^(√scale·W·q) times a positive factor per row (the dropped −|q′|²/2 and 1/√M, the shift), and a factor per row
  /// leaves the output unchanged, so dq = √scale·Wᵀ(phi ⊙ dphi) per row. (The −q′·Σ(phi ⊙ dphi) term of the key
  /// gradient below is zero here: Σ phi ⊙ dphi = num·dnum + den·dden = dout·out − dout·out.) Overwrites dphi.
  void query_grad(ConstMatrixView, ConstMatrixView phi, MatrixView dphi, MatrixView dq, float scale,
                  const Projection& p) const {
    dphi.array() *= phi.array();                                                        // (n, M)
    kernels::gemm(cview(dphi), cview(p.w), kernels::Transpose::no, dq, std::sqrt(scale), 0.0f, 1);  // (n, d)
  }
  /// dk (n, d) from dphi (n, M), the gradient of the key features phi (n, M) = e^(√scale·W·k − scale·|k|²/2 − shift)
  /// (the shift, common to all keys of the sums, cancels in the ratio): with u = phi ⊙ dphi,
  /// dk = √scale·Wᵀu − scale·k·Σu per row. Overwrites dphi.
  void key_grad(ConstMatrixView k, ConstMatrixView phi, MatrixView dphi, MatrixView dk, float scale,
                const Projection& p) const {
    dphi.array() *= phi.array();                                                        // u (n, M)
    kernels::gemm(cview(dphi), cview(p.w), kernels::Transpose::no, dk, std::sqrt(scale), 0.0f, 1);  // (n, d)
    for (Index i = 0; i < k.rows(); ++i) {
      const float sum = kernels::reduce_sum(dphi.data() + i * dphi.outerStride(), std::size_t(dphi.cols()));
      kernels::axpy(-scale * sum, k.data() + i * k.outerStride(), dk.data() + i * dk.outerStride(),
                    std::size_t(k.cols()));
    }
  }

 private:
  bool holds(Index head_dim) const noexcept { return own_.w.cols() == head_dim && own_.w.rows() == m_; }

  /// Replaces the columns of the square g by orthonormal ones spanning the same leading subspaces: modified
  /// Gram–Schmidt run twice per column ("twice is enough", Giraud et al. 2005), in double. A Gaussian g is
  /// well conditioned with overwhelming probability, so the second pass leaves columns orthonormal to rounding.
  static void orthonormalize_columns(Eigen::MatrixXd& g) {
    const Index d = g.cols();
    for (Index c = 0; c < d; ++c) {
      double* col = g.data() + c * d;
      for (int pass = 0; pass < 2; ++pass)
        for (Index p = 0; p < c; ++p) {
          const double* q = g.data() + p * d;
          double dot = 0.0;
          for (Index i = 0; i < d; ++i) dot += q[i] * col[i];
          for (Index i = 0; i < d; ++i) col[i] -= dot * q[i];
        }
      double sq = 0.0;
      for (Index i = 0; i < d; ++i) sq += col[i] * col[i];
      const double inv = 1.0 / std::sqrt(sq);
      for (Index i = 0; i < d; ++i) col[i] *= inv;
    }
  }

  /// W (M, d) drawn with the seed into `into`.
  void draw(Index d, Projection& into) const {
    Matrix& w = into.w;
    std::mt19937_64 rng(seed_);
    std::normal_distribution<double> normal(0.0, 1.0);
    w.resize(m_, d);
    for (Index r0 = 0; r0 < m_; r0 += d) {
      const Index rows = std::min(d, m_ - r0);
      Eigen::MatrixXd g(d, d);
      for (Index i = 0; i < g.size(); ++i) g.data()[i] = normal(rng);
      if (orthogonal_) orthonormalize_columns(g);
      for (Index r = 0; r < rows; ++r) {
        double norm = 1.0;
        if (orthogonal_) {  // the length of an independent Gaussian row, so rows match i.i.d. ones in norm
          double sq = 0.0;
          for (Index i = 0; i < d; ++i) {
            const double x = normal(rng);
            sq += x * x;
          }
          norm = std::sqrt(sq);
        }
        for (Index c = 0; c < d; ++c) w(r0 + r, c) = static_cast<float>(g(c, r) * norm);
      }
    }
    into.wt = w.transpose();
  }

  Index m_ = 256;
  std::uint64_t seed_ = 1;
  bool orthogonal_ = true, fixed_ = false;
  Projection own_;  // set, prepared or redrawn; empty otherwise
};

/// Attention through a feature map φ (EluPlusOneFeatures, PositiveRandomFeatures). Key padding and key
/// lengths are honoured (a padded key contributes nothing); an additive mask throws. The object holds only the
/// feature map; scratch (and a feature draw the map does not hold) lives in a Workspace of the caller's.
template <typename Map>
class Kernelized : public PerCallWorkspace<Kernelized<Map>> {
 private:
  struct Work {
    Matrix phi_q, phi_kt, gram, num;  // (c, M), (M, c), (c, c), (c, d)
    Matrix keys_t;                    // (d, c)
    std::vector<float> den, bias;     // (c) each
    // backward: the key features untransposed (c, M); S and a chunk's values transposed, (d, M) and (d, c); the
    // gradients of the query and key features (c, M), of a chunk's masked products (c, c), of the numerators (c, d)
    // and transposed (d, c), of the values transposed (d, c); the running suffix sums dSᵀ (d, M) and dz (M); the
    // gradients of the normalizers (c)
    Matrix phi_k, sums_t, values_t, dphi_q, dphi_k, grad_gram, dnum, dnum_t, dvalues_t, dsums_t;
    std::vector<float> dnorms, dden;
    KernelState prefix;  // causal backward: the running S and z of one kv head
  };
  using Projection = typename Map::Projection;

 public:
  using PerCallWorkspace<Kernelized<Map>>::forward;
  using PerCallWorkspace<Kernelized<Map>>::forward_cached;

  /// Scratch of one caller.
  struct Workspace {
    std::vector<Work> work;            // one per thread
    KernelState sums;                  // the bidirectional forward's sums over all keys (cleared, not reallocated)
    typename Map::Workspace features;  // the feature map's draw for the head size, if the map holds none
    // bidirectional backward: each head's share of dSᵀ (heads·d, M) and of dz (heads, M), summed per group into
    // the rows of the group's first head
    Matrix dsums_t, dnorms;
  };

  static constexpr bool supports_causal = true;
  static constexpr const char* name = Map::name;

  // The spelling (attention/spelling.hpp) is the feature map's: "linear", "performer:M".
  static constexpr std::string_view spelling_form = Map::spelling_form;
  static constexpr std::string_view example_spelling = Map::example_spelling;
  /// The feature map from the spelling; the options are the map's.
  static Kernelized from_spelling(const AttentionSpelling& spelling, const AttentionOptions& options) {
    return Kernelized(Map::from_spelling(spelling, options));
  }
  std::string spelling() const { return map_.spelling(); }

  Kernelized() = default;
  explicit Kernelized(Map map) : map_(std::move(map)) {}

  Map& feature_map() noexcept { return map_; }
  const Map& feature_map() const noexcept { return map_; }

  void forward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
               const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx) const {
    forward_impl(s, q, k, v, mask, out, ws, ctx, nullptr);
  }

  /// What forward_train keeps for backward, O(M·d) per kv head and O(n) per head: backward recomputes the features
  /// from q and k, with the keys' shifts the forward used.
  struct Saved : SavedForward {
    Matrix den;        ///< (heads, n_q): each query's normalizer φ(q_i)ᵀz as forward computed it (0: it saw no key)
    Matrix shifts;     ///< causal: (kv_heads, chunks), the shift each key chunk's exponents were taken with
    KernelState sums;  ///< bidirectional: S (M, d), z (M) over all keys and their shift (−inf: all padded), per kv head
    bool causal = false;
  };

  /// forward(), keeping in `saved` what backward() needs.
  void forward_train(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                     const AttentionMask& mask, MatrixView out, Saved& saved, Workspace& ws, const Context& ctx) const {
    forward_impl(s, q, k, v, mask, out, ws, ctx, &saved);
    saved.record();
  }

  /// The backward of forward_train: dq (n_q, heads·d), dk and dv (n_k, kv_heads·d) written from dout (n_q, heads·d),
  /// given the same q, k, v, mask and forward's output `out`. With num_i = φ(q_i)ᵀS and den_i = φ(q_i)ᵀz, out_i =
  /// num_i/den_i gives dnum_i = dout_i/den_i and dden_i = −dout_i·out_i/den_i; then dφ(q_i) = S·dnum_i + z·dden_i,
  /// dS = Σ_i φ(q_i)·dnum_iᵀ, dz = Σ_i φ(q_i)·dden_i, dφ(k_j) = dS·v_j + dz and dv_j = dSᵀ·φ(k_j); the feature map
  /// turns dφ into dq and dk. Causal: S and z are prefix sums, rebuilt chunk by chunk as the forward built them
  /// (one task per kv head: dq); dS and dz are suffix sums, summed from the last chunk back (another task per kv
  /// head: dk, dv); inside a chunk, the masked (c, c) products. Bidirectional: a task per head for dq and its share
  /// of dS and dz, then a task per (kv head, key chunk) for dk and dv. Uses `saved` once (saved.keep: again).
  void backward(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved, MatrixView dq,
                MatrixView dk, MatrixView dv, Workspace& ws, const Context& ctx) const {
    const char* func = "Kernelized::backward";
    saved.require_held(func);
    detail::check_attention_grads(func, s, q, k, v, out, dout, dq, dk, dv);
    check_mask(func, q.rows(), k.rows(), mask);
    if (saved.causal != mask.causal)
      throw config_error(detail::cat(func, ": the saved forward is ", saved.causal ? "causal" : "bidirectional",
                                     ", the mask ", mask.causal ? "causal" : "bidirectional"));
    const Index dh = s.head_dim, M = map_.features(dh);
    check_shape(saved.den, s.n_heads, q.rows(), func, "the saved normalizers");
    if (mask.causal) {
      const Index before = mask.causal_offset;
      check_shape(saved.shifts, s.n_kv_heads, chunks(before) + chunks(k.rows() - before), func,
                  "the saved key shifts");
    } else if (saved.sums.n_kv_heads() != s.n_kv_heads || saved.sums.features() != M || saved.sums.head_dim() != dh) {
      throw shape_error(detail::cat(func, ": the saved sums hold ", saved.sums.n_kv_heads(), " kv heads of ",
                                    saved.sums.features(), " features × ", saved.sums.head_dim(), ", expected ",
                                    s.n_kv_heads, " of ", M, " × ", dh));
    }
    const auto& fm = map_.projection_for(dh, ws.features);
    saved.take(func);
    if (mask.causal) backward_causal(s, q, k, v, mask, out, dout, saved, dq, dk, dv, ws, fm, ctx);
    else backward_bidirectional(s, q, k, v, mask, out, dout, saved, dq, dk, dv, ws, fm, ctx);
  }

  using State = KernelState;
  /// O(1) state per kv head whatever the capacity.
  State make_state(Index /*capacity*/, Index n_kv_heads, Index head_dim) const {
    map_.check(head_dim);
    return State(n_kv_heads, map_.features(head_dim), head_dim);
  }

  /// Folds k_new, v_new (n_new, kv_heads·d) into the state; query i of q (n_new, heads·d) sees the state's
  /// earlier positions and new ones up to its own.
  void forward_cached(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k_new, ConstMatrixView v_new,
                      State& state, MatrixView out, Workspace& ws, const Context& ctx) const {
    const auto& fm = map_.projection_for(s.head_dim, ws.features);
    if (state.n_kv_heads() != s.n_kv_heads || state.head_dim() != s.head_dim ||
        state.features() != map_.features(s.head_dim))
      throw shape_error(detail::cat("Kernelized::forward_cached: the state holds ", state.n_kv_heads(), " kv heads of ",
                                    state.features(), " features × ", state.head_dim(), ", expected ", s.n_kv_heads,
                                    " of ", map_.features(s.head_dim), " × ", s.head_dim));
    run(s, q, k_new, v_new, AttentionMask{}, 0, state, out, ws, fm, ctx);
  }

 private:
  static constexpr Index causal_chunk = 64, bidirectional_chunk = 256;

  /// The causal chunks of n keys.
  static Index chunks(Index n) noexcept { return (n + causal_chunk - 1) / causal_chunk; }

  /// Throws for what the masks ask that this attention cannot do, naming `func`.
  static void check_mask(const char* func, Index n_q, Index n_k, const AttentionMask& mask) {
    if (mask.additive)
      throw config_error(detail::cat(func, ": an additive mask, expected none (", name, " attention)"));
    if (mask.causal && (n_q + mask.causal_offset != n_k))
      throw shape_error(detail::cat(func, ": causal with ", n_q, " queries at offset ", mask.causal_offset, " and ",
                                    n_k, " keys, expected queries + offset = keys"));
  }

  /// forward(); with `saved`, also what backward needs.
  void forward_impl(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                    const AttentionMask& mask, MatrixView out, Workspace& ws, const Context& ctx, Saved* saved) const {
    check_mask(saved != nullptr ? "Kernelized::forward_train" : "Kernelized::forward", q.rows(), k.rows(), mask);
    const auto& fm = map_.projection_for(s.head_dim, ws.features);
    const Index M = map_.features(s.head_dim);
    if (saved != nullptr) {
      ensure_shape(saved->den, s.n_heads, q.rows());
      saved->causal = mask.causal;
    }
    if (mask.causal) {
      KernelState state(s.n_kv_heads, M, s.head_dim);
      const Index before = mask.causal_offset;  // keys before the first query: folded in as a prefix
      if (saved != nullptr) ensure_shape(saved->shifts, s.n_kv_heads, chunks(before) + chunks(k.rows() - before));
      run(s, ConstMatrixView(q.data(), 0, q.cols(), Eigen::OuterStride<>(q.outerStride())), block(k, 0, 0, before, k.cols()),
          block(v, 0, 0, before, v.cols()), mask, 0, state, out, ws, fm, ctx, saved, 0);
      run(s, q, block(k, before, 0, k.rows() - before, k.cols()), block(v, before, 0, v.rows() - before, v.cols()), mask,
          before, state, out, ws, fm, ctx, saved, chunks(before));
    } else {
      // The sums over all keys: the saved forward's, or a state kept in the workspace between calls (cleared, not
      // reallocated).
      KernelState& state = saved != nullptr ? saved->sums : ws.sums;
      if (state.n_kv_heads() != s.n_kv_heads || state.features() != M || state.head_dim() != s.head_dim)
        state = KernelState(s.n_kv_heads, M, s.head_dim);
      else
        state.clear();
      run_bidirectional(s, q, k, v, mask, out, state, ws, fm, ctx, saved != nullptr ? saved->den.data() : nullptr);
    }
  }

  bool key_padded(const AttentionMask& mask, Index j) const noexcept {
    return j >= mask.n_valid_keys || (mask.key_padding && mask.key_padding[j] != 0.0f);
  }

  /// phi_t (M, n): for exponential features the exponents W·k′ − |k′|²/2, else φ(K)ᵀ, of keys (n, d) (key j of
  /// the sequence is first_key + row); −inf (exponents) or zero (features) for padded keys.
  void key_exponents(const AttentionShape& s, ConstMatrixView keys, const AttentionMask& mask, Index first_key,
                     MatrixView phi_t, Work& w, const Projection& fm) const {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const Index n = keys.rows(), dh = keys.cols();
    ensure_shape(w.keys_t, dh, std::max(n, w.keys_t.cols()));
    MatrixView kt = block(view(w.keys_t), 0, 0, dh, n);
    kt = keys.transpose();
    w.bias.resize(std::size_t(n));
    for (Index j = 0; j < n; ++j)
      w.bias[std::size_t(j)] = key_padded(mask, first_key + j)
                                   ? neg_inf
                                   : (Map::exponential ? -0.5f * s.scale * keys.row(j).squaredNorm() : 0.0f);
    map_.map_keys_t(cview(kt), w.bias.data(), phi_t, s.scale, fm);
  }

  /// phi_t (M, n) = φ(K)ᵀ of keys (n, d) (key j of the sequence is first_key + row), padded keys zero. For
  /// exponential features the state's shift of kv head g first grows to the largest exponent, rescaling what
  /// the state has summed so far. Returns that shift (−inf while every key so far is padded; 0 for features that
  /// take none).
  float key_features(const AttentionShape& s, ConstMatrixView keys, const AttentionMask& mask, Index first_key,
                     KernelState& state, Index g, MatrixView phi_t, Work& w, const Projection& fm) const {
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    key_exponents(s, keys, mask, first_key, phi_t, w, fm);
    if constexpr (Map::exponential) {
      const Index n = keys.rows();
      float m = neg_inf;
      for (Index f = 0; f < phi_t.rows(); ++f)
        m = std::max(m, kernels::reduce_max(phi_t.data() + f * phi_t.outerStride(), std::size_t(n)));
      float& shift = state.shift(g);
      if (m > shift) {
        if (shift != neg_inf) {
          const float r = std::exp(shift - m);
          state.sums(g) *= r;
          float* z = state.norms(g);
          for (Index f = 0; f < state.features(); ++f) z[f] *= r;
        }
        shift = m;
      }
      const float sh = shift == neg_inf ? 0.0f : shift;
      for (Index f = 0; f < phi_t.rows(); ++f)  // a padded key's exponent is −inf: φ = 0
        kernels::exp_shifted_sum(phi_t.data() + f * phi_t.outerStride(), std::size_t(n), sh);
      return shift;
    }
    return 0.0f;
  }

  /// phi_t (M, n) = φ(K)ᵀ as key_features makes it, with a given shift (a forward's) instead of a running one.
  void key_features_at(const AttentionShape& s, ConstMatrixView keys, const AttentionMask& mask, Index first_key,
                       float shift, MatrixView phi_t, Work& w, const Projection& fm) const {
    key_exponents(s, keys, mask, first_key, phi_t, w, fm);
    if constexpr (Map::exponential)
      for (Index f = 0; f < phi_t.rows(); ++f)
        kernels::exp_shifted_sum(phi_t.data() + f * phi_t.outerStride(), std::size_t(keys.rows()), shift);
  }

  /// S += φ(K)ᵀ·V and z += φ(K)ᵀ·1 for kv head g.
  static void fold(KernelState& state, Index g, ConstMatrixView phi_t, ConstMatrixView values) {
    kernels::gemm(phi_t, values, kernels::Transpose::no, state.sums(g), 1.0f, 1.0f, 1);
    float* z = state.norms(g);
    for (Index f = 0; f < phi_t.rows(); ++f)
      z[f] += kernels::reduce_sum(phi_t.data() + f * phi_t.outerStride(), std::size_t(phi_t.cols()));
  }

  /// out_i = φ(q_i)·S / φ(q_i)·z with the sums over all keys summed into `state` (cleared), query rows in chunks.
  /// With den non-null, den (heads, n_q) receives each query's normalizer.
  void run_bidirectional(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                         const AttentionMask& mask, MatrixView out, KernelState& state, Workspace& ws,
                         const Projection& fm, const Context& ctx, float* den = nullptr) const {
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, M = map_.features(dh);
    const Index C = bidirectional_chunk;
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), s.n_kv_heads));
    if (static_cast<int>(ws.work.size()) < t) ws.work.resize(std::size_t(t));
    // Chunk-major: a chunk's rows serve every head while they are in cache (head-major order would stream
    // the whole sequence once per head, from memory once it outgrows the caches).
    for (Index j0 = 0; j0 < n_k; j0 += C) {
      const Index nc = std::min(C, n_k - j0);
      parallel_for(s.n_kv_heads, t, [&](Index g, int thread) {
        Work& w = ws.work[std::size_t(thread)];
        ensure_shape(w.phi_kt, M, C);
        MatrixView phi_t = block(view(w.phi_kt), 0, 0, M, nc);
        key_features(s, block(k, j0, g * dh, nc, dh), mask, j0, state, g, phi_t, w, fm);
        fold(state, g, cview(phi_t), block(v, j0, g * dh, nc, dh));
      });
    }
    const int tq = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), s.n_heads));
    if (static_cast<int>(ws.work.size()) < tq) ws.work.resize(std::size_t(tq));
    for (Index i0 = 0; i0 < n_q; i0 += C) {
      const Index nc = std::min(C, n_q - i0);
      parallel_for(s.n_heads, tq, [&](Index h, int thread) {
        Work& w = ws.work[std::size_t(thread)];
        const Index g = s.kv_head(h);
        ensure_shape(w.phi_q, C, M);
        ensure_shape(w.num, C, dh);
        w.den.resize(std::size_t(C));
        MatrixView phi = block(view(w.phi_q), 0, 0, nc, M);
        map_.map_queries(block(q, i0, h * dh, nc, dh), phi, s.scale, fm);
        MatrixView num = block(view(w.num), 0, 0, nc, dh);
        kernels::gemm(cview(phi), cview(state.sums(g)), kernels::Transpose::no, num, 1.0f, 0.0f, 1);
        for (Index i = 0; i < nc; ++i)
          w.den[std::size_t(i)] = kernels::dot(phi.data() + i * M, state.norms(g), std::size_t(M));
        if (den != nullptr) std::copy_n(w.den.data(), nc, den + h * n_q + i0);
        write_rows(num, w.den.data(), block(out, i0, h * dh, nc, dh));
      });
    }
  }

  /// Causal prefix sums over new keys k, v (n, kv_heads·d) continuing `state`; queries q (n or 0 rows) sit at
  /// the new keys' positions. Key j of the sequence is first_key + row (for padding). With `saved`, its den
  /// (heads, n) receives each query's normalizer and its shifts column first_chunk + c each kv head's shift of
  /// chunk c.
  void run(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v, const AttentionMask& mask,
           Index first_key, KernelState& state, MatrixView out, Workspace& ws, const Projection& fm,
           const Context& ctx, Saved* saved = nullptr, Index first_chunk = 0) const {
    const Index n = k.rows(), dh = s.head_dim, M = state.features(), group = s.n_heads / s.n_kv_heads;
    const Index C = causal_chunk;
    const bool with_queries = q.rows() > 0;
    const double work = double(n) * double(M) * double(dh) * double(s.n_heads);
    const int t = work < 2e5 ? 1 : static_cast<int>(std::min<Index>(effective_threads(ctx.threads), s.n_kv_heads));
    if (static_cast<int>(ws.work.size()) < t) ws.work.resize(std::size_t(t));
    for (Index c0 = 0; c0 < n; c0 += C) {  // chunk-major, as in run_bidirectional
      const Index nc = std::min(C, n - c0);
      parallel_for(s.n_kv_heads, t, [&](Index g, int thread) {
        Work& w = ws.work[std::size_t(thread)];
        ensure_shape(w.phi_kt, M, C);
        ensure_shape(w.phi_q, C, M);
        ensure_shape(w.gram, C, C);
        ensure_shape(w.num, C, dh);
        w.den.resize(std::size_t(C));
        MatrixView phi_t = block(view(w.phi_kt), 0, 0, M, nc);
        const ConstMatrixView kc = block(k, c0, g * dh, nc, dh), vc = block(v, c0, g * dh, nc, dh);
        const float shift = key_features(s, kc, mask, first_key + c0, state, g, phi_t, w, fm);
        if (saved != nullptr) saved->shifts(g, first_chunk + c0 / C) = shift;
        if (with_queries)
          for (Index h = g * group; h < (g + 1) * group; ++h) {
            MatrixView phi = block(view(w.phi_q), 0, 0, nc, M);
            map_.map_queries(block(q, c0, h * dh, nc, dh), phi, s.scale, fm);
            MatrixView gram = block(view(w.gram), 0, 0, nc, nc);  // φ(q_i)·φ(k_j) inside the chunk, j ≤ i
            kernels::gemm(cview(phi), cview(phi_t), kernels::Transpose::no, gram, 1.0f, 0.0f, 1);
            for (Index i = 0; i < nc; ++i) std::fill(gram.data() + i * gram.outerStride() + i + 1, gram.data() + i * gram.outerStride() + nc, 0.0f);
            MatrixView num = block(view(w.num), 0, 0, nc, dh);
            kernels::gemm(cview(phi), cview(state.sums(g)), kernels::Transpose::no, num, 1.0f, 0.0f, 1);
            kernels::gemm(cview(gram), vc, kernels::Transpose::no, num, 1.0f, 1.0f, 1);
            for (Index i = 0; i < nc; ++i)
              w.den[std::size_t(i)] = kernels::dot(phi.data() + i * M, state.norms(g), std::size_t(M)) +
                                      kernels::reduce_sum(gram.data() + i * gram.outerStride(), std::size_t(i + 1));
            if (saved != nullptr) std::copy_n(w.den.data(), nc, saved->den.data() + h * saved->den.cols() + c0);
            write_rows(num, w.den.data(), block(out, c0, h * dh, nc, dh));
          }
        fold(state, g, cview(phi_t), vc);
      });
    }
    state.advance(n);
  }

  /// dst_i = num_i / den_i, zeros where nothing was visible (den 0).
  static void write_rows(MatrixView num, const float* den, MatrixView dst) {
    for (Index i = 0; i < num.rows(); ++i) {
      float* o = dst.data() + i * dst.outerStride();
      const float* src = num.data() + i * num.outerStride();
      const float inv = den[i] > 0.0f ? 1.0f / den[i] : 0.0f;
      for (Index f = 0; f < num.cols(); ++f) o[f] = src[f] * inv;
    }
  }

  // ---- backward ----

  /// Threads for `tasks` tasks, with a Work for each.
  static int threads_for(const Context& ctx, Index tasks, Workspace& ws) {
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), std::max<Index>(tasks, 1)));
    if (static_cast<int>(ws.work.size()) < t) ws.work.resize(std::size_t(t));
    return t;
  }

  /// Sizes w's backward buffers for chunks of c rows.
  static void reserve_backward(Work& w, Index c, Index M, Index dh) {
    ensure_shape(w.phi_kt, M, c);
    for (Matrix* m : {&w.phi_q, &w.phi_k, &w.dphi_q, &w.dphi_k}) ensure_shape(*m, c, M);
    for (Matrix* m : {&w.gram, &w.grad_gram}) ensure_shape(*m, c, c);
    ensure_shape(w.dnum, c, dh);
    for (Matrix* m : {&w.values_t, &w.dnum_t, &w.dvalues_t}) ensure_shape(*m, dh, c);
    for (Matrix* m : {&w.sums_t, &w.dsums_t}) ensure_shape(*m, dh, M);
    w.dnorms.resize(std::size_t(M));
    w.dden.resize(std::size_t(c));
  }

  /// The gradients of n queries' numerators and normalizers from dout (n, d): dnum (n, d) = dout_i/den_i and
  /// dden_i = −dout_i·out_i/den_i, both 0 for a query that saw no key (den 0: its output is 0 whatever the inputs).
  static void output_grads(const float* den, ConstMatrixView out, ConstMatrixView dout, MatrixView dnum, float* dden) {
    const Index d = dnum.cols();
    for (Index i = 0; i < dnum.rows(); ++i) {
      const float inv = den[i] > 0.0f ? 1.0f / den[i] : 0.0f;
      const float* o = out.data() + i * out.outerStride();
      const float* g = dout.data() + i * dout.outerStride();
      float* dn = dnum.data() + i * dnum.outerStride();
      dden[i] = -inv * kernels::dot(g, o, std::size_t(d));
      for (Index f = 0; f < d; ++f) dn[f] = g[f] * inv;
    }
  }

  /// dphi (n, M) = dnum·Sᵀ + dden·zᵀ: the query features' gradients through S, given transposed (d, M), and z (M).
  static void query_feature_grads(ConstMatrixView dnum, const float* dden, ConstMatrixView sums_t, const float* norms,
                                  MatrixView dphi) {
    kernels::gemm(dnum, sums_t, kernels::Transpose::no, dphi, 1.0f, 0.0f, 1);  // (n, d)·(d, M)
    for (Index i = 0; i < dphi.rows(); ++i)
      kernels::axpy(dden[i], norms, dphi.data() + i * dphi.outerStride(), std::size_t(dphi.cols()));
  }

  /// dSᵀ (d, M) += dnumᵀ·phi and dz (M) += phiᵀ·dden for queries' features phi (n, M), dnum_t = dnumᵀ (d, n).
  static void add_query_sums(ConstMatrixView dnum_t, const float* dden, ConstMatrixView phi, MatrixView dsums_t,
                             float* dnorms) {
    kernels::gemm(dnum_t, phi, kernels::Transpose::no, dsums_t, 1.0f, 1.0f, 1);
    for (Index i = 0; i < phi.rows(); ++i)
      kernels::axpy(dden[i], phi.data() + i * phi.outerStride(), dnorms, std::size_t(phi.cols()));
  }

  /// The gradients of keys kc, values vc (n, d) through the sums that follow them, dSᵀ (d, M) and dz (M), in the
  /// frame of `shift`: phi_t (M, n) = φ(K)ᵀ, phi_k (n, M) = φ(K), dphi_k (n, M) = V·dSᵀ + 1·dzᵀ and dvalues_t (d, n)
  /// = dSᵀ·φ(K)ᵀ, in w.
  void key_side(const AttentionShape& s, ConstMatrixView kc, ConstMatrixView vc, const AttentionMask& mask,
                Index first_key, float shift, ConstMatrixView dsums_t, const float* dnorms, Work& w,
                const Projection& fm) const {
    const Index n = kc.rows(), dh = s.head_dim, M = dsums_t.cols();
    MatrixView phi_t = block(view(w.phi_kt), 0, 0, M, n), phi_k = block(view(w.phi_k), 0, 0, n, M);
    key_features_at(s, kc, mask, first_key, shift, phi_t, w, fm);
    kernels::transpose(phi_t.data(), phi_t.outerStride(), M, n, phi_k.data(), phi_k.outerStride());
    MatrixView dphi = block(view(w.dphi_k), 0, 0, n, M);
    kernels::gemm(vc, dsums_t, kernels::Transpose::no, dphi, 1.0f, 0.0f, 1);  // (n, d)·(d, M)
    for (Index j = 0; j < n; ++j) kernels::add(dnorms, dphi.data() + j * dphi.outerStride(), std::size_t(M));
    kernels::gemm(dsums_t, cview(phi_t), kernels::Transpose::no, block(view(w.dvalues_t), 0, 0, dh, n), 1.0f, 0.0f,
                  1);  // (d, M)·(M, n)
  }

  /// Writes dk and dv (n, d) of keys kc from w's phi_k, dphi_k and dvalues_t (key_side's, plus what else was
  /// added); a padded key's gradients are zero.
  void finish_keys(const AttentionShape& s, ConstMatrixView kc, const AttentionMask& mask, Index first_key,
                   MatrixView dk, MatrixView dv, Work& w, const Projection& fm) const {
    const Index n = kc.rows(), dh = s.head_dim, M = w.phi_k.cols();
    map_.key_grad(kc, block(cview(w.phi_k), 0, 0, n, M), block(view(w.dphi_k), 0, 0, n, M), dk, s.scale, fm);
    kernels::transpose(w.dvalues_t.data(), w.dvalues_t.cols(), dh, n, dv.data(), dv.outerStride());
    for (Index j = 0; j < n; ++j)
      if (key_padded(mask, first_key + j)) {
        dk.row(j).setZero();
        dv.row(j).setZero();
      }
  }

  void backward_bidirectional(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                              const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved,
                              MatrixView dq, MatrixView dk, MatrixView dv, Workspace& ws, const Projection& fm,
                              const Context& ctx) const {
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, M = map_.features(dh), C = bidirectional_chunk;
    const Index group = s.n_heads / s.n_kv_heads;
    KernelState& state = saved.sums;
    ensure_shape(ws.dsums_t, s.n_heads * dh, M);
    ensure_shape(ws.dnorms, s.n_heads, M);
    // Queries, a task per head: dq, and the head's share of dSᵀ (d, M) and dz (M).
    parallel_for(s.n_heads, threads_for(ctx, s.n_heads, ws), [&](Index h, int thread) {
      Work& w = ws.work[std::size_t(thread)];
      reserve_backward(w, C, M, dh);
      const Index g = s.kv_head(h);
      MatrixView dsums_t = block(view(ws.dsums_t), h * dh, 0, dh, M);
      float* dnorms = ws.dnorms.data() + h * M;
      const MatrixView sums = state.sums(g);
      kernels::transpose(sums.data(), sums.outerStride(), M, dh, w.sums_t.data(), w.sums_t.cols());  // (d, M)
      dsums_t.setZero();
      std::fill(dnorms, dnorms + M, 0.0f);
      for (Index i0 = 0; i0 < n_q; i0 += C) {
        const Index nc = std::min(C, n_q - i0);
        const ConstMatrixView qc = block(q, i0, h * dh, nc, dh);
        MatrixView phi = block(view(w.phi_q), 0, 0, nc, M), dphi = block(view(w.dphi_q), 0, 0, nc, M);
        MatrixView dnum = block(view(w.dnum), 0, 0, nc, dh), dnum_t = block(view(w.dnum_t), 0, 0, dh, nc);
        map_.map_queries(qc, phi, s.scale, fm);
        output_grads(saved.den.data() + h * n_q + i0, block(out, i0, h * dh, nc, dh), block(dout, i0, h * dh, nc, dh),
                     dnum, w.dden.data());
        query_feature_grads(cview(dnum), w.dden.data(), cview(w.sums_t), state.norms(g), dphi);
        kernels::transpose(dnum.data(), dnum.outerStride(), nc, dh, dnum_t.data(), dnum_t.outerStride());
        add_query_sums(cview(dnum_t), w.dden.data(), cview(phi), dsums_t, dnorms);
        map_.query_grad(qc, cview(phi), dphi, block(dq, i0, h * dh, nc, dh), s.scale, fm);
      }
    });
    // A kv head's dS and dz sum over its group, into the first head's rows.
    for (Index h = 0; h < s.n_heads; ++h)
      if (h % group != 0) {
        const Index first = h - h % group;
        block(view(ws.dsums_t), first * dh, 0, dh, M) += block(view(ws.dsums_t), h * dh, 0, dh, M);
        ws.dnorms.row(first) += ws.dnorms.row(h);
      }
    // Keys, a task per (kv head, key chunk): every key sees the same dS and dz.
    const Index k_chunks = (n_k + C - 1) / C;
    parallel_for(s.n_kv_heads * k_chunks, threads_for(ctx, s.n_kv_heads * k_chunks, ws), [&](Index task, int thread) {
      Work& w = ws.work[std::size_t(thread)];
      reserve_backward(w, C, M, dh);
      const Index g = task / k_chunks, j0 = (task % k_chunks) * C, nc = std::min(C, n_k - j0);
      const float shift = Map::exponential ? state.shift(g) : 0.0f;
      if (shift == -std::numeric_limits<float>::infinity()) {  // every key padded: none is seen
        block(dk, j0, g * dh, nc, dh).setZero();
        block(dv, j0, g * dh, nc, dh).setZero();
        return;
      }
      const ConstMatrixView kc = block(k, j0, g * dh, nc, dh);
      key_side(s, kc, block(v, j0, g * dh, nc, dh), mask, j0, shift, block(cview(ws.dsums_t), g * group * dh, 0, dh, M),
               ws.dnorms.data() + g * group * M, w, fm);
      finish_keys(s, kc, mask, j0, block(dk, j0, g * dh, nc, dh), block(dv, j0, g * dh, nc, dh), w, fm);
    });
  }

  /// Causal chunk c as the forward made it: the keys before the first query in chunks from 0, then the queries'
  /// keys in chunks from `before` (query i at key before + i).
  struct CausalSpan {
    Index key0, rows, query0;
    bool queries;
  };
  static CausalSpan causal_span(Index c, Index before, Index n_k) noexcept {
    const Index prefix = chunks(before), C = causal_chunk;
    if (c < prefix) return {c * C, std::min(C, before - c * C), 0, false};
    const Index q0 = (c - prefix) * C;
    return {before + q0, std::min(C, n_k - before - q0), q0, true};
  }

  void backward_causal(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                       const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, Saved& saved,
                       MatrixView dq, MatrixView dk, MatrixView dv, Workspace& ws, const Projection& fm,
                       const Context& ctx) const {
    // The key sweeps (the larger) are the first tasks, the query sweeps the last.
    parallel_for(2 * s.n_kv_heads, threads_for(ctx, 2 * s.n_kv_heads, ws), [&](Index task, int thread) {
      Work& w = ws.work[std::size_t(thread)];
      if (task < s.n_kv_heads) causal_key_grads(s, task, q, k, v, mask, out, dout, saved, dk, dv, w, fm);
      else causal_query_grads(s, task - s.n_kv_heads, q, k, v, mask, out, dout, saved, dq, w, fm);
    });
  }

  /// dq of kv head g's query heads: S and z summed chunk by chunk as the forward summed them (same features, same
  /// shifts), dφ(q_i) = S·dnum_i + z·dden_i over the chunks before plus the chunk's own keys j ≤ i.
  void causal_query_grads(const AttentionShape& s, Index g, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                          const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, const Saved& saved,
                          MatrixView dq, Work& w, const Projection& fm) const {
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, M = map_.features(dh), C = causal_chunk;
    const Index group = s.n_heads / s.n_kv_heads, before = mask.causal_offset;
    reserve_backward(w, C, M, dh);
    KernelState& state = w.prefix;
    if (state.n_kv_heads() != 1 || state.features() != M || state.head_dim() != dh) state = KernelState(1, M, dh);
    else state.clear();
    const Index n_chunks = chunks(before) + chunks(n_q);
    for (Index c = 0; c < n_chunks; ++c) {
      const CausalSpan span = causal_span(c, before, n_k);
      const Index nc = span.rows;
      const ConstMatrixView kc = block(k, span.key0, g * dh, nc, dh), vc = block(v, span.key0, g * dh, nc, dh);
      MatrixView phi_t = block(view(w.phi_kt), 0, 0, M, nc);
      key_features(s, kc, mask, span.key0, state, 0, phi_t, w, fm);
      if (span.queries) {
        // The chunk's key features (nc, M), values transposed (d, nc) and S before it transposed (d, M), shared by
        // the group's heads.
        MatrixView phi_k = block(view(w.phi_k), 0, 0, nc, M), values_t = block(view(w.values_t), 0, 0, dh, nc);
        kernels::transpose(phi_t.data(), phi_t.outerStride(), M, nc, phi_k.data(), phi_k.outerStride());
        kernels::transpose(vc.data(), vc.outerStride(), nc, dh, values_t.data(), values_t.outerStride());
        const MatrixView sums = state.sums(0);
        kernels::transpose(sums.data(), sums.outerStride(), M, dh, w.sums_t.data(), w.sums_t.cols());
        for (Index h = g * group; h < (g + 1) * group; ++h) {
          const Index i0 = span.query0;
          const ConstMatrixView qc = block(q, i0, h * dh, nc, dh);
          MatrixView phi = block(view(w.phi_q), 0, 0, nc, M), dphi = block(view(w.dphi_q), 0, 0, nc, M);
          MatrixView dnum = block(view(w.dnum), 0, 0, nc, dh);
          map_.map_queries(qc, phi, s.scale, fm);
          output_grads(saved.den.data() + h * n_q + i0, block(out, i0, h * dh, nc, dh),
                       block(dout, i0, h * dh, nc, dh), dnum, w.dden.data());
          query_feature_grads(cview(dnum), w.dden.data(), cview(w.sums_t), state.norms(0), dphi);  // before
          // The chunk's own keys: G (nc, nc) = dnum·Vᵀ + dden·1ᵀ, the gradient of φ(q_i)·φ(k_j), for j ≤ i.
          MatrixView grad = block(view(w.grad_gram), 0, 0, nc, nc);
          kernels::gemm(cview(dnum), cview(values_t), kernels::Transpose::no, grad, 1.0f, 0.0f, 1);
          for (Index i = 0; i < nc; ++i) {
            float* row = grad.data() + i * grad.outerStride();
            const float dd = w.dden[std::size_t(i)];
            for (Index j = 0; j <= i; ++j) row[j] += dd;
            std::fill(row + i + 1, row + nc, 0.0f);
          }
          kernels::gemm(cview(grad), cview(phi_k), kernels::Transpose::no, dphi, 1.0f, 1.0f, 1);  // (nc, nc)·(nc, M)
          map_.query_grad(qc, cview(phi), dphi, block(dq, i0, h * dh, nc, dh), s.scale, fm);
        }
      }
      if (c + 1 < n_chunks) fold(state, 0, cview(phi_t), vc);
    }
  }

  /// dk and dv of kv head g: dS and dz summed from the last chunk back (each chunk's queries added after its keys
  /// took what the later chunks give), dφ(k_j) = dS·v_j + dz and dv_j = dSᵀ·φ(k_j), plus the chunk's own queries
  /// i ≥ j. Each chunk's features are made with its saved shift; the suffix sums are brought to it from the later
  /// chunks' (larger) shifts by e^(shift − later) ≤ 1.
  void causal_key_grads(const AttentionShape& s, Index g, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                        const AttentionMask& mask, ConstMatrixView out, ConstMatrixView dout, const Saved& saved,
                        MatrixView dk, MatrixView dv, Work& w, const Projection& fm) const {
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, M = map_.features(dh), C = causal_chunk;
    const Index group = s.n_heads / s.n_kv_heads, before = mask.causal_offset;
    reserve_backward(w, C, M, dh);
    MatrixView dsums_t = view(w.dsums_t);  // (d, M)
    float* dnorms = w.dnorms.data();       // (M)
    dsums_t.setZero();
    std::fill(dnorms, dnorms + M, 0.0f);
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    float frame = neg_inf;  // the shift dS and dz are in (none before the last chunk)
    for (Index c = chunks(before) + chunks(n_q) - 1; c >= 0; --c) {
      const CausalSpan span = causal_span(c, before, n_k);
      const Index nc = span.rows;
      const float shift = saved.shifts(g, c);
      if (shift == neg_inf) {  // every key up to this chunk's is padded: none is seen, this chunk's queries see none
        block(dk, span.key0, g * dh, nc, dh).setZero();
        block(dv, span.key0, g * dh, nc, dh).setZero();
        continue;
      }
      if (frame != neg_inf && shift != frame) {  // shifts only grow along the sequence: r ≤ 1
        const float r = std::exp(shift - frame);
        dsums_t *= r;
        kernels::scale(dnorms, r, std::size_t(M));
      }
      frame = shift;
      const ConstMatrixView kc = block(k, span.key0, g * dh, nc, dh), vc = block(v, span.key0, g * dh, nc, dh);
      key_side(s, kc, vc, mask, span.key0, shift, cview(dsums_t), dnorms, w, fm);
      if (span.queries) {
        const ConstMatrixView phi_t = block(cview(w.phi_kt), 0, 0, M, nc);
        MatrixView dphi_k = block(view(w.dphi_k), 0, 0, nc, M), dvalues_t = block(view(w.dvalues_t), 0, 0, dh, nc);
        for (Index h = g * group; h < (g + 1) * group; ++h) {
          const Index i0 = span.query0;
          MatrixView phi = block(view(w.phi_q), 0, 0, nc, M);
          MatrixView dnum = block(view(w.dnum), 0, 0, nc, dh), dnum_t = block(view(w.dnum_t), 0, 0, dh, nc);
          map_.map_queries(block(q, i0, h * dh, nc, dh), phi, s.scale, fm);
          output_grads(saved.den.data() + h * n_q + i0, block(out, i0, h * dh, nc, dh),
                       block(dout, i0, h * dh, nc, dh), dnum, w.dden.data());
          kernels::transpose(dnum.data(), dnum.outerStride(), nc, dh, dnum_t.data(), dnum_t.outerStride());
          // dv_j += Σ_{i ≥ j} (φ(q_i)·φ(k_j))·dnum_i: dvᵀ (d, nc) += dnumᵀ·P with P (nc, nc) masked to j ≤ i.
          MatrixView gram = block(view(w.gram), 0, 0, nc, nc);
          kernels::gemm(cview(phi), phi_t, kernels::Transpose::no, gram, 1.0f, 0.0f, 1);
          for (Index i = 0; i < nc; ++i)
            std::fill(gram.data() + i * gram.outerStride() + i + 1, gram.data() + i * gram.outerStride() + nc, 0.0f);
          kernels::gemm(cview(dnum_t), cview(gram), kernels::Transpose::no, dvalues_t, 1.0f, 1.0f, 1);
          // dφ(k_j) += Σ_{i ≥ j} φ(q_i)·G_ij: Gᵀ (nc, nc) = V·dnumᵀ + 1·ddenᵀ, kept where i ≥ j.
          MatrixView grad_t = block(view(w.grad_gram), 0, 0, nc, nc);
          kernels::gemm(vc, cview(dnum_t), kernels::Transpose::no, grad_t, 1.0f, 0.0f, 1);
          for (Index j = 0; j < nc; ++j) {
            float* row = grad_t.data() + j * grad_t.outerStride();
            std::fill(row, row + j, 0.0f);
            for (Index i = j; i < nc; ++i) row[i] += w.dden[std::size_t(i)];
          }
          kernels::gemm(cview(grad_t), cview(phi), kernels::Transpose::no, dphi_k, 1.0f, 1.0f, 1);
          // This chunk's queries join the suffix sums for the chunks before it.
          add_query_sums(cview(dnum_t), w.dden.data(), cview(phi), dsums_t, dnorms);
        }
      }
      finish_keys(s, kc, mask, span.key0, block(dk, span.key0, g * dh, nc, dh), block(dv, span.key0, g * dh, nc, dh),
                  w, fm);
    }
  }

  Map map_{};
};

/// Linear attention with φ = elu + 1 (Katharopoulos et al. 2020).
using LinearAttention = Kernelized<EluPlusOneFeatures>;
/// Performer FAVOR+ attention (Choromanski et al. 2020); Performer(PositiveRandomFeatures(M, seed)).
using Performer = Kernelized<PositiveRandomFeatures>;

static_assert(SpelledAttention<LinearAttention> && IncrementalAttention<LinearAttention>);
static_assert(SpelledAttention<Performer> && IncrementalAttention<Performer>);
static_assert(TrainableAttention<LinearAttention> && TrainableAttention<Performer>);

}  // namespace polyformer
