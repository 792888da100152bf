#pragma once
/// \file Mixture-of-experts FFN: a router sends each token to its top-k of n_experts FeedForward experts
/// and mixes their outputs by gate weights; usable as the FFN of any block (a FeedForwardPolicy).
///
/// One forward over x (n, d), E = n_experts:
/// 1. Router: probs (n, E) = softmax over experts of router(x), a Dense d → E (sparsely-gated MoE,
///    Shazeer et al. 2017).
/// 2. Top-k: each token's k most probable experts, ties broken by the lower expert index; choice c of token t
///    is its (c+1)-th best, expert e(t, c). k = 1 is the Switch Transformer (Fedus et al. 2022); k = 2
///    GShard (Lepikhin et al. 2021) and Mixtral (Jiang et al. 2024).
/// 3. Gates: w(t, c) = p(t, e(t, c)) / Σ_c' p(t, e(t, c')) with MoEOptions::renormalize (GShard, Mixtral), or the
///    raw p(t, e(t, c)) without (Switch; with k = 1 renormalizing makes every gate 1).
/// 4. Capacity (MoEOptions::capacity_factor > 0): each expert accepts at most
///    C = ceil(capacity_factor · n · k / E) (token, choice) pairs. Pairs are accepted in priority order —
///    every token's first choice in token order, then every second choice, and so on (GShard's Algorithm 1,
///    without its random dispatch of second choices) — while their expert has room. A rejected pair is
///    dropped: it contributes nothing and the token's other gates are not renormalized. A token whose
///    choices are all dropped gets y = 0, so in a block it passes through the residual only.
/// 5. y(t) = Σ over t's accepted choices of w(t, c) · FFN_e(t,c)(x(t)).
///
/// Load-balancing auxiliary loss (Switch Transformer eq. 4, generalized from 1 to k choices):
///     aux = E · Σ_i f_i · P_i,   f_i = #{(t, c) : e(t, c) = i} / (n · k),   P_i = (1/n) · Σ_t p(t, i),
/// f_i counted over all n·k choices before capacity drops. Uniform routing (f_i = P_i = 1/E) gives 1; the
/// training loop scales it by MoEOptions::load_balance_weight (Switch uses 0.01) and adds it to the loss. After a
/// forward, the caller's Workspace holds it as ws.aux_loss; after a training forward, its Saved as saved.aux_loss.
///
/// After a forward the caller's Workspace holds its router probabilities, choices, gates, gathered rows, hidden
/// activations and expert outputs (as FeedForward, the activated hidden state, not the pre-activation), for
/// inspection.
///
/// Training: forward_train computes the same y and keeps in a Saved the routing and, for every busy expert, its
/// FeedForward::Saved over its gathered rows. backward takes dy (n, d) to
/// - the experts: expert e(t, c) gets w(t, c) · dy(t) on the row of every accepted pair (dropped pairs send it
///   nothing), and its input gradients are summed back into dx(t);
/// - the gates: ∂L/∂w(t, c) = dy(t) · FFN_e(t,c)(x(t)) for accepted pairs, 0 for dropped ones; with renormalize,
///   through w = p / S (S = Σ_c p(t, e(t, c)), dropped choices included, as the forward does not renormalize
///   after drops): ∂L/∂p(t, e(t, j)) = (∂L/∂w(t, j) − Σ_c ∂L/∂w(t, c) · w(t, c)) / S;
/// - the auxiliary loss, scaled by MoEOptions::load_balance_weight λ: ∂(λ·aux)/∂p(t, i) = λ · E · f_i / n (the
///   counts f_i are piecewise constant in the parameters and contribute nothing);
/// - the router: through the softmax, ∂L/∂logit(t, i) = p(t, i) · (∂L/∂p(t, i) − Σ_j p(t, j) · ∂L/∂p(t, j)),
///   then the router Dense's backward, whose dx adds to the experts'.
///
/// Execution, grouped by expert: the rows routed to expert e are gathered into one contiguous block
/// (count_e, d) of a shared buffer (experts' blocks back to back), each expert runs one product per
/// projection over its block into its own block of an output buffer, and y is combined per token from those
/// blocks (no scatter-add, so no races and a deterministic sum). Experts run in parallel, one expert's
/// products on one thread, largest first on whichever thread is free (longest-processing-time list
/// scheduling); when fewer experts are busy than there are threads, or the loads are too uneven to balance,
/// the experts run one after another on all threads each. Every buffer of the caller's Workspace only grows, so
/// a steady state allocates nothing.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"
#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/softmax.hpp"
#include "polyformer/layers/ffn.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer {

/// Routing options of a MixtureOfExperts.
struct MoEOptions {
  /// Gates renormalized over the k chosen experts (GShard, Mixtral); false keeps the raw router
  /// probabilities (Switch Transformer).
  bool renormalize = true;
  /// Capacity per expert ceil(capacity_factor · n_tokens · k / n_experts); <= 0 (or +inf) means unlimited.
  double capacity_factor = 0.0;
  /// The weight λ of the load-balancing loss in training (Switch uses 0.01): the backward adds
  /// load_balance_weight · ∂aux/∂θ; the training loop adds load_balance_weight · aux (Saved::aux_loss) to its loss.
  /// 0 leaves the router trained by the gates alone. Finite and >= 0.
  double load_balance_weight = 0.0;
};

namespace detail {

/// Grows m to at least `rows` rows of `cols` columns and never shrinks it, so a workspace reused for
/// fewer rows is not reallocated.
inline void grow_rows(Matrix& m, Index rows, Index cols) {
  if (m.cols() != cols || m.rows() < rows) m.resize(rows, cols);
}

/// Grows v to at least n entries, never shrinks it.
template <typename T>
void grow_size(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace detail

/// Top-k mixture of FeedForward<Lin, Act> experts (plain or gated) with a Dense router; see the file comment
/// for the routing, capacity and auxiliary-loss definitions. The weights are read through `const`; the routing
/// and expert buffers live in the caller's Workspace, so one object serves any number of threads, each with its
/// own workspace.
template <LinearPolicy Lin, ActivationPolicy Act>
class MixtureOfExperts {
 public:
  using expert_type = FeedForward<Lin, Act>;
  using linear_type = Lin;
  using activation_type = Act;
  static constexpr bool gated = Act::gated;

  /// One caller's scratch. After a forward it holds that forward's routing and expert rows, for inspection; its
  /// buffers only grow, so reused across calls it allocates nothing once grown.
  struct Workspace {
    // ---- The last forward. ----

    /// Tokens (n).
    Index tokens = 0;
    /// Capacity per expert (n when unlimited).
    Index capacity = 0;
    /// The load-balancing loss E · Σ_i f_i · P_i (0 for n = 0).
    double aux_loss = 0.0;

    /// Router probabilities (n, n_experts): the softmax over experts of every token.
    ConstMatrixView router_probs() const { return rows_of(probs_, tokens); }
    /// The expert of token t's choice c (c = 0 is its most probable expert).
    Index expert_of(Index t, int c) const noexcept { return choice_[at(t, c)]; }
    /// The gate weight of token t's choice c (as routed; a dropped choice's weight is not applied).
    float gate(Index t, int c) const noexcept { return gates_[at(t, c)]; }
    /// Whether token t's choice c was dropped for lack of capacity.
    bool dropped(Index t, int c) const noexcept { return rows_[at(t, c)] < 0; }
    /// Whether all of token t's choices were dropped (its output is zero).
    bool token_dropped(Index t) const noexcept {
      for (int c = 0; c < top_k_; ++c)
        if (!dropped(t, c)) return false;
      return true;
    }
    /// (token, choice) pairs dropped.
    Index dropped_count() const noexcept { return offsets_.empty() ? 0 : tokens * top_k_ - offsets_.back(); }
    /// Row of token t's choice c in the expert buffers (expert_input, expert_hidden, expert_output of all
    /// experts back to back), -1 when dropped; its row within expert e's block is this minus expert_offset(e).
    Index buffer_row(Index t, int c) const noexcept { return rows_[at(t, c)]; }
    /// Tokens accepted by each expert (n_experts); they sum to n·k − dropped_count().
    std::span<const Index> expert_counts() const noexcept { return counts_; }
    /// Choices that picked each expert before capacity (n_experts): f_i = expert_requests()[i] / (n·k).
    std::span<const Index> expert_requests() const noexcept { return requests_; }
    /// First row of expert e's block in the expert buffers.
    Index expert_offset(Index e) const noexcept { return offsets_[static_cast<std::size_t>(e)]; }
    /// The token of each row of expert e's block (expert_counts()[e]), in priority order.
    std::span<const Index> expert_tokens(Index e) const noexcept {
      return std::span<const Index>(row_token_.data() + expert_offset(e), static_cast<std::size_t>(count(e)));
    }
    /// Expert e's gathered input rows (count_e, d).
    ConstMatrixView expert_input(Index e) const { return expert_block(gathered_, e); }
    /// Expert e's activated hidden rows (count_e, hidden): act(up x), or act(gate x, up x) when gated.
    ConstMatrixView expert_hidden(Index e) const { return expert_block(hidden_, e); }
    /// Expert e's gate projection rows (count_e, hidden), before the activation; gated experts only.
    ConstMatrixView expert_gate_projection(Index e) const requires(gated) { return expert_block(gate_hidden_, e); }
    /// Expert e's output rows (count_e, d), before the gate weights.
    ConstMatrixView expert_output(Index e) const { return expert_block(expert_out_, e); }

   private:
    friend class MixtureOfExperts;

    std::size_t at(Index t, int c) const noexcept {
      POLYFORMER_ASSERT(t >= 0 && t < tokens && c >= 0 && c < top_k_);
      return static_cast<std::size_t>(t * top_k_ + c);
    }
    Index count(Index e) const noexcept { return counts_[static_cast<std::size_t>(e)]; }
    static ConstMatrixView rows_of(const Matrix& m, Index rows) {
      return ConstMatrixView(m.data(), rows, m.cols(), Eigen::OuterStride<>(m.cols()));
    }
    ConstMatrixView expert_block(const Matrix& m, Index e) const {
      POLYFORMER_ASSERT(e >= 0 && e < static_cast<Index>(counts_.size()));
      return ConstMatrixView(m.data() + expert_offset(e) * m.cols(), count(e), m.cols(),
                             Eigen::OuterStride<>(m.cols()));
    }

    int top_k_ = 0;                   // k of the last forward
    Matrix probs_;                    // (≥ n, n_experts): router logits, then probabilities
    std::vector<Index> choice_;       // (n, k) expert of each choice
    std::vector<float> gates_;        // (n, k) gate weights
    std::vector<Index> rows_;         // (n, k) row in the expert buffers, -1 when dropped
    std::vector<Index> counts_;       // (n_experts) accepted rows
    std::vector<Index> requests_;     // (n_experts) choices before capacity
    std::vector<Index> offsets_;      // (n_experts + 1) first row of each expert's block
    std::vector<Index> order_;        // (n_experts) busy experts, largest first
    std::vector<Index> row_token_;    // (rows) token of every row of the expert buffers
    std::vector<Index> thread_load_;  // (threads) list-scheduling estimate
    Matrix gathered_;                 // (≥ rows, d) experts' inputs, block by block
    Matrix hidden_;                   // (≥ rows, hidden) activated hidden
    Matrix gate_hidden_;              // (≥ rows, hidden) gate projections, gated only
    Matrix expert_out_;               // (≥ rows, d) experts' outputs before the gates
  };

  /// What a training forward keeps for its backward (one per call in flight), and the backward's scratch.
  struct Saved : SavedForward {
    /// The forward's routing: router_probs, expert_of, gate, dropped, expert_counts, expert_requests,
    /// expert_tokens, expert_input and expert_output as after forward(). Its hidden-state accessors
    /// (expert_hidden, expert_gate_projection) have no columns here: each expert's own Saved holds those.
    Workspace routing;
    /// The forward's load-balancing loss aux (as routing.aux_loss); the training loop adds
    /// options.load_balance_weight · aux_loss to its loss.
    double aux_loss = 0.0;
    /// The options the forward ran with; backward follows them (renormalize, load_balance_weight).
    MoEOptions options{};
    /// Each expert's training forward over its gathered rows (n_experts; only busy experts' hold a forward).
    std::vector<typename expert_type::Saved> experts;
    Matrix grad_rows;                ///< (rows, d): backward's scratch, w(t, c) · dy(t) on every accepted row
    Matrix grad_inputs;              ///< (rows, d): backward's scratch, the experts' input gradients
    Matrix grad_logits;              ///< (n, n_experts): backward's scratch, ∂L/∂(router logits)
    std::vector<float> grad_gates;   ///< (n, k): backward's scratch, ∂L/∂w(t, c) (0 for dropped pairs)
  };

  /// The router's and every expert's gradients.
  struct Gradients {
    Dense::Gradients router{};
    std::vector<typename expert_type::Gradients> experts{};  // (n_experts)
  };

  MixtureOfExperts() = default;

  /// router: Dense d → n_experts (weight (n_experts, d), bias optional); experts: all d → hidden → d;
  /// top_k in 1..n_experts.
  MixtureOfExperts(Dense router, std::vector<expert_type> experts, int top_k, MoEOptions options = {})
      : router_(std::move(router)), experts_(std::move(experts)), top_k_(top_k) {
    if (experts_.empty()) throw config_error("MixtureOfExperts: experts is empty, expected at least 1 expert");
    const Index n_exp = n_experts();
    if (top_k_ < 1 || top_k_ > n_exp)
      throw config_error(detail::cat("MixtureOfExperts: top_k is ", top_k_, ", expected 1..", n_exp,
                                     " (1 to the number of experts)"));
    const Index d = experts_[0].dim(), h = experts_[0].hidden_dim();
    if (d < 1 || h < 1)
      throw shape_error(detail::cat("MixtureOfExperts: experts[0] maps ", d, " -> ", h, " -> ", d,
                                    ", expected d >= 1 and hidden >= 1 (a default-constructed FeedForward?)"));
    if (router_.out_features() != n_exp || router_.in_features() != d)
      throw shape_error(detail::cat("MixtureOfExperts: router weight has shape ",
                                    detail::shape_str(router_.out_features(), router_.in_features()), ", expected ",
                                    detail::shape_str(n_exp, d), " (n_experts, d)"));
    for (std::size_t e = 1; e < experts_.size(); ++e)
      if (experts_[e].dim() != d || experts_[e].hidden_dim() != h)
        throw shape_error(detail::cat("MixtureOfExperts: experts[", e, "] maps ", experts_[e].dim(), " -> ",
                                      experts_[e].hidden_dim(), " -> ", experts_[e].dim(), ", expected ", d, " -> ", h,
                                      " -> ", d, " as experts[0]"));
    set_options(options);
  }

  Index dim() const noexcept { return router_.in_features(); }

  /// "router.*", then each expert's projections as "experts.<e>.<name>" (named by `names`, as FeedForward).
  void parameters(ParameterList& list, const std::string& prefix, const FFNNames& names = {})
    requires HasParameters<Lin>
  {
    router_.parameters(list, prefix + "router.");
    for (std::size_t e = 0; e < experts_.size(); ++e)
      experts_[e].parameters(list, detail::cat(prefix, "experts.", e, "."), names);
  }
  Gradients make_gradients() const requires TrainableLinear<Lin> {
    Gradients g;
    g.router = router_.make_gradients();
    g.experts.reserve(experts_.size());
    for (const expert_type& expert : experts_) g.experts.push_back(expert.make_gradients());
    return g;
  }
  /// The gradients, named as parameters() names the tensors ("router.*", "experts.<e>.<name>*").
  void gradients(GradientList& list, const std::string& prefix, Gradients& g, const FFNNames& names = {}) const
    requires TrainableLinear<Lin>
  {
    if (g.experts.size() != experts_.size())
      throw shape_error(detail::cat("MixtureOfExperts::gradients: g holds gradients for ", g.experts.size(),
                                    " experts, expected ", experts_.size()));
    router_.gradients(list, prefix + "router.", g.router);
    for (std::size_t e = 0; e < experts_.size(); ++e)
      experts_[e].gradients(list, detail::cat(prefix, "experts.", e, "."), g.experts[e], names);
  }

  Index hidden_dim() const noexcept { return experts_.empty() ? 0 : experts_[0].hidden_dim(); }
  Index n_experts() const noexcept { return static_cast<Index>(experts_.size()); }
  int top_k() const noexcept { return top_k_; }
  const MoEOptions& options() const noexcept { return options_; }
  /// Replaces the options (for the next forward); throws config_error on a NaN capacity factor or a load-balance
  /// weight that is negative or not finite.
  void set_options(MoEOptions options) {
    if (std::isnan(options.capacity_factor))
      throw config_error("MixtureOfExperts: options.capacity_factor is nan, expected a number (<= 0 for unlimited)");
    if (!std::isfinite(options.load_balance_weight) || options.load_balance_weight < 0.0)
      throw config_error(detail::cat("MixtureOfExperts: options.load_balance_weight is ", options.load_balance_weight,
                                     ", expected a finite number >= 0"));
    options_ = options;
  }

  Dense& router() noexcept { return router_; }
  const Dense& router() const noexcept { return router_; }
  /// The experts (a span: their number is fixed at construction; replace weights, not shapes).
  std::span<expert_type> experts() noexcept { return experts_; }
  std::span<const expert_type> experts() const noexcept { return experts_; }

  /// Per-expert capacity for n tokens: ceil(capacity_factor · n · k / n_experts), at most n; n when unlimited.
  /// (A product within 1e-12 relative above an integer counts as that integer: 1.1 · 10 / 11 gives 1, not 2.)
  Index capacity_for(Index n) const noexcept {
    const double factor = options_.capacity_factor;
    if (!(factor > 0.0) || std::isinf(factor) || n == 0) return n;
    const double c = std::ceil(factor * static_cast<double>(n) * top_k_ / static_cast<double>(n_experts()) *
                               (1.0 - 1e-12));
    return c >= static_cast<double>(n) ? n : std::max<Index>(1, static_cast<Index>(c));
  }

  /// y (n, d) = MoE(x (n, d)) with the caller's workspace, which then holds this forward's routing and expert
  /// rows. y must not alias x.
  void forward(ConstMatrixView x, MatrixView y, Workspace& ws, const Context& ctx) const {
    if (experts_.empty())
      throw config_error("MixtureOfExperts::forward: no experts (default-constructed), expected at least 1");
    check_cols(x, dim(), "MixtureOfExperts::forward", "x");
    check_shape(y, x.rows(), dim(), "MixtureOfExperts::forward", "y");
    ctx.validate("MixtureOfExperts::forward");
    ws.tokens = x.rows();
    ws.top_k_ = top_k_;
    route(x, ws, ctx);
    assign(ws);
    const Index rows = ws.offsets_.back(), h = hidden_dim();
    detail::grow_rows(ws.hidden_, rows, h);
    if constexpr (gated) detail::grow_rows(ws.gate_hidden_, rows, h);
    for_busy_experts(ws, ctx, [&](Index e, const Context& c) { run_expert(e, x, ws, c); });
    combine(y, ws, ctx);
  }

  /// The same with a workspace of this call's own (allocates its buffers every call).
  void forward(ConstMatrixView x, MatrixView y, const Context& ctx) const {
    Workspace ws;
    forward(x, y, ws, ctx);
  }

  /// Convenience: returns y for x (n, d); ws then holds this forward's routing and expert rows.
  Matrix forward(const Matrix& x, Workspace& ws, const Context& ctx = {}) const {
    Matrix y(x.rows(), x.cols());
    forward(cview(x), view(y), ws, ctx);
    return y;
  }

  /// Convenience: returns y for x (n, d).
  Matrix forward(const Matrix& x, const Context& ctx = {}) const {
    Workspace ws;
    return forward(x, ws, ctx);
  }

  /// forward() for training: the same y (n, d) from x (n, d), keeping in `saved` what backward() needs — the
  /// routing (saved.routing), the aux loss (saved.aux_loss), the options, and every busy expert's FeedForward::Saved
  /// over its gathered rows. y must not alias x.
  void forward_train(ConstMatrixView x, MatrixView y, Saved& saved, const Context& ctx) const
    requires TrainableLinear<Lin>
  {
    const char* func = "MixtureOfExperts::forward_train";
    if (experts_.empty())
      throw config_error(detail::cat(func, ": no experts (default-constructed), expected at least 1"));
    check_cols(x, dim(), func, "x");
    check_shape(y, x.rows(), dim(), func, "y");
    ctx.validate(func);
    Workspace& ws = saved.routing;
    ws.tokens = x.rows();
    ws.top_k_ = top_k_;
    route(x, ws, ctx);
    assign(ws);
    saved.experts.resize(experts_.size());
    for_busy_experts(ws, ctx, [&](Index e, const Context& c) {
      gather(e, x, ws);
      const auto u = static_cast<std::size_t>(e);
      experts_[u].forward_train(ws.expert_block(ws.gathered_, e), expert_rows(ws.expert_out_, ws, e),
                                saved.experts[u], c);
    });
    combine(y, ws, ctx);
    saved.aux_loss = ws.aux_loss;
    saved.options = options_;
    saved.record();
  }

  /// The backward of forward_train(x) for the loss L with ∂L/∂y = dy (n, d), plus the forward's
  /// options.load_balance_weight · aux: adds the router's and the experts' gradients into g (frozen ones skipped;
  /// an expert gets gradients only from its accepted rows) and writes (or, with accumulate_dx, adds) dx (n, d); a
  /// dx of no columns skips it. dx must not alias x or dy. Uses `saved` once (saved.keep: again).
  void backward(ConstMatrixView x, ConstMatrixView dy, MatrixView dx, Gradients& g, Saved& saved, const Context& ctx,
                bool accumulate_dx = false) const
    requires TrainableLinear<Lin>
  {
    const char* func = "MixtureOfExperts::backward";
    saved.require_held(func);
    Workspace& ws = saved.routing;
    const Index n = ws.tokens, d = dim(), n_exp = n_experts();
    const int k = top_k_;
    check_shape(x, n, d, func, "x");
    check_shape(dy, n, d, func, "dy");
    if (dx.cols() != 0) check_shape(dx, n, d, func, "dx");
    ctx.validate(func);
    if (ws.top_k_ != k || static_cast<Index>(ws.counts_.size()) != n_exp ||
        saved.experts.size() != experts_.size())
      throw config_error(detail::cat(func, ": the saved forward routed over ", ws.counts_.size(), " experts with k = ",
                                     ws.top_k_, ", expected ", n_exp, " experts with k = ", k,
                                     " (a forward of another MixtureOfExperts?)"));
    if (g.experts.size() != experts_.size())
      throw shape_error(detail::cat(func, ": g holds gradients for ", g.experts.size(), " experts, expected ",
                                    experts_.size()));
    detail::check_gradient(func, "router.weight", g.router.weight, n_exp, d);
    detail::check_gradient(func, "router.bias", g.router.bias, n_exp);
    if (detail::live(g.router.bias) && !router_.has_bias())
      throw shape_error(detail::cat(func, ": a router.bias gradient was given for a router without a bias"));
    saved.take(func);

    const Index rows = ws.offsets_.back();
    ensure_shape(saved.grad_rows, rows, d);
    ensure_shape(saved.grad_logits, n, n_exp);
    saved.grad_gates.resize(static_cast<std::size_t>(n * k));
    const bool renormalize = saved.options.renormalize;
    // ∂(λ·aux)/∂p(t, i) = λ · E · f_i / n, the same for every token.
    const double aux_scale = n > 0 ? saved.options.load_balance_weight * static_cast<double>(n_exp) /
                                         (static_cast<double>(n) * static_cast<double>(n * k))
                                   : 0.0;
    // Per token: the experts' output gradients on its accepted rows, its gates' gradients, then through the
    // renormalization and the softmax to its router logits. Every token writes its own rows only.
    parallel_chunks(n, n * k * d >= (1 << 16) ? ctx.threads : 1, [&](Index t0, Index t1, int) {
      for (Index t = t0; t < t1; ++t) {
        const auto dyt = dy.row(t);                        // (d)
        const float* p = ws.probs_.data() + t * n_exp;     // (E)
        float* dz = saved.grad_logits.data() + t * n_exp;  // (E): ∂L/∂p, then ∂L/∂logit
        for (Index e = 0; e < n_exp; ++e)
          dz[e] = static_cast<float>(aux_scale * static_cast<double>(ws.requests_[static_cast<std::size_t>(e)]));
        const std::size_t first = static_cast<std::size_t>(t * k);
        float* dw = saved.grad_gates.data() + first;  // (k): ∂L/∂w(t, c)
        float dw_dot_w = 0.0f, sum = 0.0f;             // Σ_c ∂L/∂w(t, c) · w(t, c); S = Σ_c p(t, e(t, c))
        for (int c = 0; c < k; ++c) {
          const std::size_t i = first + static_cast<std::size_t>(c);
          const Index row = ws.rows_[i];
          dw[c] = 0.0f;
          if (row >= 0) {
            saved.grad_rows.row(row) = ws.gates_[i] * dyt;
            dw[c] = dyt.dot(ws.expert_out_.row(row));
          }
          dw_dot_w += dw[c] * ws.gates_[i];
          sum += p[ws.choice_[i]];
        }
        if (renormalize) {
          const float inv_sum = 1.0f / sum;
          for (int c = 0; c < k; ++c)
            dz[ws.choice_[first + static_cast<std::size_t>(c)]] += (dw[c] - dw_dot_w) * inv_sum;
        } else {
          for (int c = 0; c < k; ++c) dz[ws.choice_[first + static_cast<std::size_t>(c)]] += dw[c];
        }
        float dot = 0.0f;  // Σ_j p_j · ∂L/∂p_j
        for (Index e = 0; e < n_exp; ++e) dot += p[e] * dz[e];
        for (Index e = 0; e < n_exp; ++e) dz[e] = p[e] * (dz[e] - dot);
      }
    });
    const ConstMatrixView grad_logits = cview(saved.grad_logits);  // (n, E)
    router_.backward(x, grad_logits, dx, g.router, ctx, accumulate_dx);

    // The experts over their blocks: weight gradients from their accepted rows, input gradients into grad_inputs.
    const bool want_dx = dx.cols() != 0;
    if (want_dx) ensure_shape(saved.grad_inputs, rows, d);
    for_busy_experts(ws, ctx, [&](Index e, const Context& c) {
      const auto u = static_cast<std::size_t>(e);
      saved.experts[u].keep = saved.keep;
      const MatrixView grad_in = want_dx ? expert_rows(saved.grad_inputs, ws, e)
                                         : MatrixView(nullptr, 0, 0, Eigen::OuterStride<>(1));  // (count_e, d)
      experts_[u].backward(ws.expert_block(ws.gathered_, e), ws.expert_block(saved.grad_rows, e), grad_in,
                           g.experts[u], saved.experts[u], c);
    });
    if (!want_dx) return;
    // dx(t) += the input gradients of t's accepted rows.
    parallel_chunks(n, n * k * d >= (1 << 16) ? ctx.threads : 1, [&](Index t0, Index t1, int) {
      for (Index t = t0; t < t1; ++t)
        for (int c = 0; c < k; ++c) {
          const Index row = ws.rows_[static_cast<std::size_t>(t * k + c)];
          if (row >= 0) dx.row(t) += saved.grad_inputs.row(row);
        }
    });
  }

 private:
  /// Expert e's block (count_e, cols) of a buffer of all experts' rows back to back.
  static MatrixView expert_rows(Matrix& m, const Workspace& ws, Index e) {
    const Index cols = m.cols();
    return MatrixView(m.data() + ws.expert_offset(e) * cols, ws.count(e), cols, Eigen::OuterStride<>(cols));
  }

  /// Copies the rows of x routed to expert e into its block of the gathered buffer.
  static void gather(Index e, ConstMatrixView x, Workspace& ws) {
    const Index m = ws.count(e), r0 = ws.expert_offset(e), d = ws.gathered_.cols();
    for (Index r = r0; r < r0 + m; ++r)
      std::memcpy(ws.gathered_.data() + r * d, x.data() + ws.row_token_[static_cast<std::size_t>(r)] * x.outerStride(),
                  static_cast<std::size_t>(d) * sizeof(float));
  }

  /// Router probabilities, top-k choices and gates of every token; the request counts and the aux loss.
  void route(ConstMatrixView x, Workspace& ws, const Context& ctx) const {
    const Index n = ws.tokens, n_exp = n_experts();
    const int k = top_k_;
    detail::grow_rows(ws.probs_, n, n_exp);
    const std::size_t pairs = static_cast<std::size_t>(n * k);
    detail::grow_size(ws.choice_, pairs);
    detail::grow_size(ws.gates_, pairs);
    detail::grow_size(ws.rows_, pairs);
    const auto ne = static_cast<std::size_t>(n_exp);
    ws.counts_.resize(ne);
    ws.requests_.resize(ne);
    ws.offsets_.resize(ne + 1);
    ws.order_.resize(ne);
    router_.forward(x, MatrixView(ws.probs_.data(), n, n_exp, Eigen::OuterStride<>(n_exp)), ctx);  // logits (n, E)
    const bool renormalize = options_.renormalize;
    parallel_chunks(n, n * n_exp >= (1 << 14) ? ctx.threads : 1, [&](Index t0, Index t1, int) {
      for (Index t = t0; t < t1; ++t) {
        float* p = ws.probs_.data() + t * n_exp;  // (E)
        kernels::softmax(p, static_cast<std::size_t>(n_exp));
        Index* chosen = ws.choice_.data() + t * k;  // (k)
        float sum = 0.0f;
        for (int c = 0; c < k; ++c) {
          // The best expert not chosen yet; the strict > keeps the lower index on ties.
          Index best = -1;
          for (Index e = 0; e < n_exp; ++e) {
            if (std::find(chosen, chosen + c, e) != chosen + c) continue;
            if (best < 0 || p[e] > p[best]) best = e;
          }
          chosen[c] = best;
          sum += p[best];
        }
        float* w = ws.gates_.data() + t * k;  // (k)
        const float scale = renormalize ? 1.0f / sum : 1.0f;
        for (int c = 0; c < k; ++c) w[c] = p[chosen[c]] * scale;
      }
    });
    std::fill(ws.requests_.begin(), ws.requests_.end(), Index{0});
    for (std::size_t i = 0; i < pairs; ++i) ++ws.requests_[static_cast<std::size_t>(ws.choice_[i])];
    // aux = E · Σ_i f_i · P_i (Switch Transformer eq. 4 with n·k choices), in double.
    ws.aux_loss = 0.0;
    if (n > 0) {
      for (Index e = 0; e < n_exp; ++e) {
        double p_sum = 0.0;
        for (Index t = 0; t < n; ++t) p_sum += ws.probs_(t, e);
        const double f = static_cast<double>(ws.requests_[static_cast<std::size_t>(e)]) / static_cast<double>(pairs);
        ws.aux_loss += f * (p_sum / static_cast<double>(n));
      }
      ws.aux_loss *= static_cast<double>(n_exp);
    }
  }

  /// Capacity in priority order (all first choices in token order, then all second choices, ...): each pair's
  /// row in the expert buffers, the experts' counts and offsets, and the token of every row.
  void assign(Workspace& ws) const {
    const Index n = ws.tokens, n_exp = n_experts();
    const int k = top_k_;
    ws.capacity = capacity_for(n);
    std::fill(ws.counts_.begin(), ws.counts_.end(), Index{0});
    for (int c = 0; c < k; ++c)
      for (Index t = 0; t < n; ++t) {
        const std::size_t i = static_cast<std::size_t>(t * k + c);
        Index& filled = ws.counts_[static_cast<std::size_t>(ws.choice_[i])];
        ws.rows_[i] = filled < ws.capacity ? filled++ : -1;  // the slot within the expert for now
      }
    ws.offsets_[0] = 0;
    for (Index e = 0; e < n_exp; ++e)
      ws.offsets_[static_cast<std::size_t>(e + 1)] = ws.offsets_[static_cast<std::size_t>(e)] + ws.count(e);
    const Index total = ws.offsets_.back();
    detail::grow_size(ws.row_token_, static_cast<std::size_t>(total));
    for (Index t = 0; t < n; ++t)
      for (int c = 0; c < k; ++c) {
        Index& row = ws.rows_[ws.at(t, c)];
        if (row < 0) continue;
        row += ws.expert_offset(ws.choice_[ws.at(t, c)]);
        ws.row_token_[static_cast<std::size_t>(row)] = t;
      }
    const Index d = dim();
    detail::grow_rows(ws.gathered_, total, d);
    detail::grow_rows(ws.expert_out_, total, d);
  }

  /// f(e, ctx_e) for every busy expert e: in parallel one per thread (largest first, ctx_e of one thread), or one
  /// after another on all threads (ctx_e = ctx). In parallel, the first exception f throws is rethrown here once
  /// every expert has run (the pool's threads must not throw).
  template <typename F>
  void for_busy_experts(Workspace& ws, const Context& ctx, F&& f) const {
    const Index n_exp = n_experts();
    const int threads = ctx.threads;
    Index busy = 0;
    for (Index e = 0; e < n_exp; ++e)
      if (ws.count(e) > 0) ws.order_[static_cast<std::size_t>(busy++)] = e;
    std::sort(ws.order_.begin(), ws.order_.begin() + busy, [&](Index a, Index b) {
      return ws.count(a) != ws.count(b) ? ws.count(a) > ws.count(b) : a < b;
    });
    if (threads > 1 && busy >= threads && balanced(busy, threads, ws)) {
      const Context one{1};
      std::exception_ptr failure;
      std::atomic<bool> failed{false};
      parallel_for(busy, threads, [&](Index i, int) {
        try {
          f(ws.order_[static_cast<std::size_t>(i)], one);
        } catch (...) {
          if (!failed.exchange(true)) failure = std::current_exception();
        }
      });
      if (failure) std::rethrow_exception(failure);
    } else {
      for (Index i = 0; i < busy; ++i) f(ws.order_[static_cast<std::size_t>(i)], ctx);
    }
  }

  /// Whether list scheduling of the busy experts (ws.order_, largest first) over `threads` threads finishes
  /// within 1.15× of a perfect split of the rows; otherwise all threads per expert is faster.
  static bool balanced(Index busy, int threads, Workspace& ws) {
    std::vector<Index>& load = ws.thread_load_;
    detail::grow_size(load, static_cast<std::size_t>(threads));
    std::fill(load.begin(), load.begin() + threads, Index{0});
    for (Index i = 0; i < busy; ++i)
      *std::min_element(load.begin(), load.begin() + threads) += ws.count(ws.order_[static_cast<std::size_t>(i)]);
    const Index makespan = *std::max_element(load.begin(), load.begin() + threads);
    const double ideal = static_cast<double>(ws.offsets_.back()) / threads;
    return static_cast<double>(makespan) <= 1.15 * ideal;
  }

  /// Expert e over its block: gather its rows of x, then FeedForward's formula, one product per projection.
  /// (Not expert.forward: a FeedForward::Workspace is sized to exactly the rows it gets, which change with every
  /// routing, and would reallocate; the blocks here live in grow-only buffers.)
  void run_expert(Index e, ConstMatrixView x, Workspace& ws, const Context& ctx) const {
    const Index m = ws.count(e), r0 = ws.expert_offset(e), d = dim(), h = hidden_dim();
    gather(e, x, ws);
    const ConstMatrixView in(ws.gathered_.data() + r0 * d, m, d, Eigen::OuterStride<>(d));       // (m, d)
    const MatrixView hidden(ws.hidden_.data() + r0 * h, m, h, Eigen::OuterStride<>(h));          // (m, hidden)
    const MatrixView out(ws.expert_out_.data() + r0 * d, m, d, Eigen::OuterStride<>(d));         // (m, d)
    const MatrixView gate = gated ? MatrixView(ws.gate_hidden_.data() + r0 * h, m, h, Eigen::OuterStride<>(h))
                                  : MatrixView(nullptr, 0, 0, Eigen::OuterStride<>(1));        // (m, hidden)
    experts_[static_cast<std::size_t>(e)].forward_into(in, out, hidden, gate, ctx);
  }

  /// y(t) = Σ over accepted choices of w(t, c) · (expert output row); zero when all were dropped.
  void combine(MatrixView y, const Workspace& ws, const Context& ctx) const {
    const Index n = ws.tokens, d = dim();
    const int k = top_k_;
    parallel_chunks(n, n * k * d >= (1 << 16) ? ctx.threads : 1, [&](Index t0, Index t1, int) {
      for (Index t = t0; t < t1; ++t) {
        auto yt = y.row(t);  // (d)
        bool any = false;
        for (int c = 0; c < k; ++c) {
          const Index row = ws.rows_[static_cast<std::size_t>(t * k + c)];
          if (row < 0) continue;
          const float w = ws.gates_[static_cast<std::size_t>(t * k + c)];
          const auto out = ws.expert_out_.row(row);  // (d)
          if (any) yt += w * out;
          else yt = w * out;
          any = true;
        }
        if (!any) yt.setZero();
      }
    });
  }

  Dense router_{};                    // (n_experts, d)
  std::vector<expert_type> experts_;  // n_experts, each d → hidden → d
  int top_k_ = 1;
  MoEOptions options_{};
};

static_assert(FeedForwardPolicy<MixtureOfExperts<Dense, ReLU>> && FeedForwardPolicy<MixtureOfExperts<Dense, SwiGLU>>);
static_assert(TrainableFeedForward<MixtureOfExperts<Dense, ReLU>> &&
              TrainableFeedForward<MixtureOfExperts<Dense, SwiGLU>>);

}  // namespace polyformer
