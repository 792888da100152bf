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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <Eigen/QR>

#include "polyformer/attention/mask.hpp"
#include "polyformer/attention/spelling.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/reduce.hpp"

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

 private:
  bool holds(Index head_dim) const noexcept { return own_.w.cols() == head_dim && own_.w.rows() == m_; }

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
      Eigen::MatrixXd basis = g;
      if (orthogonal_) {
        Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
        basis = qr.householderQ() * Eigen::MatrixXd::Identity(d, d);  // columns orthonormal
      }
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
        for (Index c = 0; c < d; ++c) w(r0 + r, c) = static_cast<float>(basis(c, r) * norm);
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
    const char* func = "Kernelized::forward";
    if (mask.additive) throw config_error(detail::cat(func, ": an additive mask, expected none (", name, " attention)"));
    if (mask.causal && (q.rows() + mask.causal_offset != k.rows()))
      throw shape_error(detail::cat(func, ": causal with ", q.rows(), " queries at offset ", mask.causal_offset,
                                    " and ", k.rows(), " keys, expected queries + offset = keys"));
    const auto& fm = map_.projection_for(s.head_dim, ws.features);
    const Index M = map_.features(s.head_dim);
    if (mask.causal) {
      KernelState state(s.n_kv_heads, M, s.head_dim);
      const Index before = mask.causal_offset;  // keys before the first query: folded in as a prefix
      run(s, ConstMatrixView(q.data(), 0, q.cols(), Eigen::OuterStride<>(q.outerStride())), block(k, 0, 0, before, k.cols()),
          block(v, 0, 0, before, v.cols()), mask, 0, state, out, ws, fm, ctx);
      run(s, q, block(k, before, 0, k.rows() - before, k.cols()), block(v, before, 0, v.rows() - before, v.cols()), mask,
          before, state, out, ws, fm, ctx);
    } else {
      run_bidirectional(s, q, k, v, mask, out, ws, fm, ctx);
    }
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

  bool key_padded(const AttentionMask& mask, Index j) const noexcept {
    return j >= mask.n_valid_keys || (mask.key_padding && mask.key_padding[j] != 0.0f);
  }

  /// phi_t (M, n) = φ(K)ᵀ of keys (n, d) (key j of the sequence is first_key + row), padded keys zero. For
  /// exponential features the state's shift of kv head g first grows to the largest exponent, rescaling what
  /// the state has summed so far.
  void key_features(const AttentionShape& s, ConstMatrixView keys, const AttentionMask& mask, Index first_key,
                    KernelState& state, Index g, MatrixView phi_t, Work& w, const Projection& fm) const {
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
    if constexpr (Map::exponential) {
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
    }
  }

  /// S += φ(K)ᵀ·V and z += φ(K)ᵀ·1 for kv head g.
  static void fold(KernelState& state, Index g, ConstMatrixView phi_t, ConstMatrixView values) {
    kernels::gemm(phi_t, values, kernels::Transpose::no, state.sums(g), 1.0f, 1.0f, 1);
    float* z = state.norms(g);
    for (Index f = 0; f < phi_t.rows(); ++f)
      z[f] += kernels::reduce_sum(phi_t.data() + f * phi_t.outerStride(), std::size_t(phi_t.cols()));
  }

  /// out_i = φ(q_i)·S / φ(q_i)·z with the sums over all keys, query rows in chunks.
  void run_bidirectional(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v,
                         const AttentionMask& mask, MatrixView out, Workspace& ws, const Projection& fm,
                         const Context& ctx) const {
    const Index n_q = q.rows(), n_k = k.rows(), dh = s.head_dim, M = map_.features(dh);
    const Index C = bidirectional_chunk;
    const int t = static_cast<int>(std::min<Index>(effective_threads(ctx.threads), s.n_kv_heads));
    if (static_cast<int>(ws.work.size()) < t) ws.work.resize(std::size_t(t));
    // The sums over all keys, in a state kept in the workspace between calls (cleared, not reallocated).
    if (ws.sums.n_kv_heads() != s.n_kv_heads || ws.sums.features() != M || ws.sums.head_dim() != dh)
      ws.sums = KernelState(s.n_kv_heads, M, dh);
    else
      ws.sums.clear();
    KernelState& state = ws.sums;
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
        write_rows(num, w.den.data(), block(out, i0, h * dh, nc, dh));
      });
    }
  }

  /// Causal prefix sums over new keys k, v (n, kv_heads·d) continuing `state`; queries q (n or 0 rows) sit at
  /// the new keys' positions. Key j of the sequence is first_key + row (for padding).
  void run(const AttentionShape& s, ConstMatrixView q, ConstMatrixView k, ConstMatrixView v, const AttentionMask& mask,
           Index first_key, KernelState& state, MatrixView out, Workspace& ws, const Projection& fm,
           const Context& ctx) const {
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
        key_features(s, kc, mask, first_key + c0, state, g, phi_t, w, fm);
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

  Map map_{};
};

/// Linear attention with φ = elu + 1 (Katharopoulos et al. 2020).
using LinearAttention = Kernelized<EluPlusOneFeatures>;
/// Performer FAVOR+ attention (Choromanski et al. 2020); Performer(PositiveRandomFeatures(M, seed)).
using Performer = Kernelized<PositiveRandomFeatures>;

static_assert(SpelledAttention<LinearAttention> && IncrementalAttention<LinearAttention>);
static_assert(SpelledAttention<Performer> && IncrementalAttention<Performer>);

}  // namespace polyformer
