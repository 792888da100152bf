// MixtureOfExperts against a per-token float64 oracle (softmax, top-k, gates, capacity in priority order, each
// chosen expert's FFN from the dense weights), capacity drops on known routings, the auxiliary loss by hand,
// the MoE as the FFN of encoder and decoder layers against their residual wiring, and one const MoE shared by
// threads with a workspace each.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>

#include "polyformer/polyformer.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

namespace {

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using VectorD = Eigen::VectorXd;

static_assert(pf::FeedForwardPolicy<pf::FeedForward<pf::Dense, pf::GELU>>);
static_assert(pf::FeedForwardPolicy<pf::FeedForward<pf::Dense, pf::SwiGLU>>);
static_assert(pf::FeedForwardPolicy<pf::MixtureOfExperts<pf::Dense, pf::GELU>>);
static_assert(pf::FeedForwardPolicy<pf::MixtureOfExperts<pf::Dense, pf::SwiGLU>>);
static_assert(!pf::FeedForwardPolicy<pf::Dense>);  // no dim()

template <typename Act>
using MoE = pf::MixtureOfExperts<pf::Dense, Act>;
template <typename Act>
using Workspace = typename MoE<Act>::Workspace;
template <typename Act>
using Expert = pf::FeedForward<pf::Dense, Act>;

/// Weights N(0, 1/in) so activations stay O(1); bias N(0, 0.1²) or none.
pf::Dense dense(Index in, Index out, unsigned seed, bool bias = true) {
  return pf::Dense(pft::random_matrix(out, in, seed, 1.0f / std::sqrt(static_cast<float>(in))),
                   bias ? pf::Vector(pft::random_matrix(out, 1, seed + 1000, 0.1f).col(0)) : pf::Vector());
}

template <typename Act>
Expert<Act> make_expert(Index d, Index h, unsigned seed) {
  if constexpr (Act::gated) return Expert<Act>(dense(d, h, seed), dense(d, h, seed + 1), dense(h, d, seed + 2));
  else return Expert<Act>(dense(d, h, seed), dense(h, d, seed + 1));
}

template <typename Act>
std::vector<Expert<Act>> make_experts(Index n_exp, Index d, Index h, unsigned seed) {
  std::vector<Expert<Act>> experts;
  for (Index e = 0; e < n_exp; ++e) experts.push_back(make_expert<Act>(d, h, seed + 10 * static_cast<unsigned>(e)));
  return experts;
}

template <typename Act>
MoE<Act> make_moe(Index n_exp, Index d, Index h, int k, unsigned seed, pf::MoEOptions options = {},
                  bool router_bias = true) {
  return MoE<Act>(dense(d, n_exp, seed + 777, router_bias), make_experts<Act>(n_exp, d, h, seed), k, options);
}

// ---- The float64 oracle, one token at a time. ----

VectorD linear_d(const VectorD& x, const pf::Dense& l) {
  VectorD y = l.weight().cast<double>() * x;
  if (l.has_bias()) y += l.bias().cast<double>();
  return y;
}

template <typename Act>
VectorD expert_d(const Expert<Act>& f, const VectorD& x) {
  VectorD u = linear_d(x, f.up());
  if constexpr (Act::gated) {
    const VectorD g = linear_d(x, f.gate());
    for (Index i = 0; i < u.size(); ++i) u(i) *= g(i) / (1.0 + std::exp(-g(i)));  // silu(gate) · up
  } else {
    for (Index i = 0; i < u.size(); ++i) {
      const double v = u(i);
      if constexpr (std::is_same_v<Act, pf::ReLU>) u(i) = v > 0 ? v : 0.0;
      else u(i) = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));  // exact GELU
    }
  }
  return linear_d(u, f.down());
}

struct Reference {
  MatrixD y;                                // (n, d)
  MatrixD probs;                            // (n, E)
  std::vector<std::vector<Index>> choices;  // (n, k)
  std::vector<std::vector<double>> gates;   // (n, k)
  std::vector<std::vector<bool>> dropped;   // (n, k)
  std::vector<Index> counts, requests;      // (E)
  std::vector<bool> ambiguous;              // (n): the k-th and (k+1)-th probabilities within 1e-5
  double aux = 0;
};

/// The layer's definition spelled out: softmax, sort by (probability desc, index asc), top-k gates, capacity
/// ceil(cf·n·k/E) accepted choice rank by choice rank in token order, y = Σ accepted w · FFN_e(x).
template <typename Act>
Reference oracle(const MoE<Act>& moe, const Matrix& x) {
  const Index n = x.rows(), n_exp = moe.n_experts();
  const int k = moe.top_k();
  const double cf = moe.options().capacity_factor;
  const Index cap = cf > 0 ? std::min<Index>(n, static_cast<Index>(std::ceil(cf * double(n) * k / double(n_exp)))) : n;
  Reference r;
  r.y = MatrixD::Zero(n, x.cols());
  r.probs.resize(n, n_exp);
  r.counts.assign(std::size_t(n_exp), 0);
  r.requests.assign(std::size_t(n_exp), 0);
  for (Index t = 0; t < n; ++t) {
    VectorD p = linear_d(x.row(t).cast<double>().transpose(), moe.router());
    p = (p.array() - p.maxCoeff()).exp();
    p /= p.sum();
    r.probs.row(t) = p.transpose();
    std::vector<Index> order(static_cast<std::size_t>(n_exp));
    std::iota(order.begin(), order.end(), Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return p(a) > p(b); });
    order.resize(std::size_t(k));
    double sum = 0;
    for (Index e : order) sum += p(e);
    std::vector<double> w;
    for (Index e : order) w.push_back(moe.options().renormalize ? p(e) / sum : p(e));
    for (Index e : order) ++r.requests[std::size_t(e)];
    std::vector<double> sorted(p.data(), p.data() + n_exp);
    std::sort(sorted.rbegin(), sorted.rend());
    r.ambiguous.push_back(k < n_exp && sorted[std::size_t(k) - 1] - sorted[std::size_t(k)] < 1e-5);
    r.choices.push_back(order);
    r.gates.push_back(w);
    r.dropped.emplace_back(std::size_t(k), false);
  }
  for (int c = 0; c < k; ++c)
    for (Index t = 0; t < n; ++t) {
      const Index e = r.choices[std::size_t(t)][std::size_t(c)];
      if (r.counts[std::size_t(e)] < cap) ++r.counts[std::size_t(e)];
      else r.dropped[std::size_t(t)][std::size_t(c)] = true;
    }
  for (Index t = 0; t < n; ++t)
    for (int c = 0; c < k; ++c) {
      if (r.dropped[std::size_t(t)][std::size_t(c)]) continue;
      const Index e = r.choices[std::size_t(t)][std::size_t(c)];
      r.y.row(t) += r.gates[std::size_t(t)][std::size_t(c)] *
                    expert_d(moe.experts()[std::size_t(e)], x.row(t).cast<double>().transpose()).transpose();
    }
  for (Index e = 0; e < n_exp; ++e)
    r.aux += double(r.requests[std::size_t(e)]) / double(n * k) * r.probs.col(e).mean();
  r.aux *= double(n_exp);
  return r;
}

/// max |y − ref| over the rows not skipped, relative to max(1, max |ref|).
double rel_err(const Matrix& y, const MatrixD& ref, const std::vector<bool>& skip = {}) {
  double err = 0, scale = 1;
  for (Index t = 0; t < ref.rows(); ++t) {
    if (!skip.empty() && skip[std::size_t(t)]) continue;
    err = std::max(err, (y.row(t).cast<double>() - ref.row(t)).cwiseAbs().maxCoeff());
    scale = std::max(scale, ref.row(t).cwiseAbs().maxCoeff());
  }
  return err / scale;
}

/// The implementation's routing (in the workspace of its last forward) equals the oracle's on every unambiguous
/// token.
template <typename Act>
void check_routing(const MoE<Act>& moe, const Workspace<Act>& ws, const Reference& ref) {
  for (Index t = 0; t < ws.tokens; ++t) {
    if (ref.ambiguous[std::size_t(t)]) continue;
    for (int c = 0; c < moe.top_k(); ++c) {
      INFO("token " << t << " choice " << c);
      REQUIRE(ws.expert_of(t, c) == ref.choices[std::size_t(t)][std::size_t(c)]);
      CHECK(ws.gate(t, c) == Approx(ref.gates[std::size_t(t)][std::size_t(c)]).margin(1e-6));
      CHECK(ws.dropped(t, c) == ref.dropped[std::size_t(t)][std::size_t(c)]);
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("layers/moe: top-k mixture equals a per-token float64 oracle", "[layers][moe]", pf::ReLU, pf::GELU,
                   pf::SwiGLU) {
  struct Shape {
    Index n_exp, d, h;
    bool router_bias, renormalize;
    float skew;  // added to the router bias of expert 0: uneven loads
  };
  unsigned seed = 1;
  Workspace<TestType> ws;  // one for every shape: it grows (and follows the number of experts) as needed
  for (const Shape s : {Shape{4, 16, 24, true, true, 0.0f}, Shape{5, 33, 40, false, false, 0.0f},
                        Shape{8, 20, 36, true, true, 0.0f}, Shape{6, 17, 19, true, true, 2.5f}})
    for (int k : {1, 2, 3}) {
      auto moe = make_moe<TestType>(s.n_exp, s.d, s.h, k, seed += 100, pf::MoEOptions{s.renormalize, 0.0}, s.router_bias);
      if (s.skew != 0.0f) moe.router().bias()(0) += s.skew;
      for (Index n : {1, 7, 64, 300})
        for (int threads : {1, 2}) {
          const Matrix x = pft::random_matrix(n, s.d, seed + unsigned(n));
          Matrix y(n, s.d);
          moe.forward(pf::cview(x), pf::view(y), ws, pf::Context{threads});
          const Reference ref = oracle(moe, x);
          INFO(TestType::name << " experts " << s.n_exp << " d " << s.d << " hidden " << s.h << " k " << k << " n " << n
                              << " threads " << threads << " skew " << s.skew);
          CHECK(std::count(ref.ambiguous.begin(), ref.ambiguous.end(), true) <= 1);
          check_routing(moe, ws, ref);
          CHECK(rel_err(y, ref.y, ref.ambiguous) < 1e-5);
          CHECK(ws.dropped_count() == 0);
          CHECK(ws.capacity == n);
          CHECK(ws.aux_loss == Approx(ref.aux).epsilon(1e-5));
          CHECK(rel_err(Matrix(ws.router_probs()), ref.probs) < 1e-6);
          REQUIRE(static_cast<Index>(ws.expert_counts().size()) == s.n_exp);
          Index accepted = 0;
          for (Index e = 0; e < s.n_exp; ++e) {
            accepted += ws.expert_counts()[std::size_t(e)];
            CHECK(ws.expert_counts()[std::size_t(e)] == ws.expert_requests()[std::size_t(e)]);
          }
          CHECK(accepted == n * k);
        }
    }
}

TEMPLATE_TEST_CASE("layers/moe: one expert with k = 1 is the dense FeedForward exactly", "[layers][moe]", pf::ReLU,
                   pf::SwiGLU) {
  const Index d = 64, h = 256;
  Expert<TestType> ffn = make_expert<TestType>(d, h, 5);
  for (bool renormalize : {true, false}) {
    MoE<TestType> moe(dense(d, 1, 6), {ffn}, 1, pf::MoEOptions{renormalize, 0.0});
    Workspace<TestType> ws;
    for (Index n : {7, 300})
      for (int threads : {1, 2}) {
        const Matrix x = pft::random_matrix(n, d, 7 + unsigned(n));
        Matrix dense_y(n, d), moe_y(n, d);
        ffn.forward(pf::cview(x), pf::view(dense_y), pf::Context{threads});
        moe.forward(pf::cview(x), pf::view(moe_y), ws, pf::Context{threads});
        INFO("n " << n << " threads " << threads << " renormalize " << renormalize);
        CHECK((moe_y.array() == dense_y.array()).all());
        CHECK(ws.aux_loss == 1.0);
      }
  }
}

TEST_CASE("layers/moe: the buffers kept for a backward pass hold each expert's rows", "[layers][moe]") {
  const Index d = 12, h = 20, n = 40;
  const auto moe = make_moe<pf::SwiGLU>(4, d, h, 2, 3, pf::MoEOptions{true, 1.0});
  const Matrix x = pft::random_matrix(n, d, 4);
  Workspace<pf::SwiGLU> ws;
  const Matrix y = moe.forward(x, ws, pf::Context{2});
  for (Index e = 0; e < moe.n_experts(); ++e) {
    const auto tokens = ws.expert_tokens(e);
    REQUIRE(static_cast<Index>(tokens.size()) == ws.expert_counts()[std::size_t(e)]);
    const Matrix in = ws.expert_input(e);
    for (std::size_t r = 0; r < tokens.size(); ++r) CHECK((in.row(Index(r)).array() == x.row(tokens[r]).array()).all());
    Matrix out(in.rows(), d);
    Expert<pf::SwiGLU>::Workspace expert_ws;
    moe.experts()[std::size_t(e)].forward(pf::cview(in), pf::view(out), expert_ws, {});
    CHECK(pft::max_abs_diff(out, Matrix(ws.expert_output(e))) < 1e-6);
    CHECK(pft::max_abs_diff(expert_ws.hidden, Matrix(ws.expert_hidden(e))) < 1e-6);
    CHECK(pft::max_abs_diff(expert_ws.gate_out, Matrix(ws.expert_gate_projection(e))) < 1e-6);
  }
  // y(t) from the kept rows and gates.
  Matrix combined = Matrix::Zero(n, d);
  for (Index t = 0; t < n; ++t)
    for (int c = 0; c < 2; ++c)
      if (!ws.dropped(t, c)) {
        const Index e = ws.expert_of(t, c), row = ws.buffer_row(t, c) - ws.expert_offset(e);
        CHECK(ws.expert_tokens(e)[std::size_t(row)] == t);
        combined.row(t) += ws.gate(t, c) * ws.expert_output(e).row(row);
      }
  CHECK(pft::max_abs_diff(combined, y) < 1e-6);
  // Grow-only workspace: fewer tokens, then as many again, reuse the same buffers.
  const float* probs = ws.router_probs().data();
  const float* outputs = ws.expert_output(0).data();
  moe.forward(Matrix(x.topRows(7)), ws, pf::Context{1});
  CHECK(ws.tokens == 7);
  CHECK((moe.forward(x, ws, pf::Context{2}).array() == y.array()).all());
  CHECK(ws.router_probs().data() == probs);
  CHECK(ws.expert_output(0).data() == outputs);
}

TEST_CASE("layers/moe: one const MoE serves several threads at once, a workspace each", "[layers][moe][threads]") {
  const Index d = 16, h = 24;
  const auto moe = make_moe<pf::SwiGLU>(4, d, h, 2, 61, pf::MoEOptions{true, 1.25});
  const std::vector<Matrix> xs{pft::random_matrix(50, d, 62), pft::random_matrix(13, d, 63),
                               pft::random_matrix(1, d, 64)};
  std::vector<Matrix> expected;
  std::vector<double> expected_aux;
  for (const Matrix& x : xs) {
    Workspace<pf::SwiGLU> ws;
    expected.push_back(moe.forward(x, ws, pf::Context{1}));
    expected_aux.push_back(ws.aux_loss);
  }
  std::vector<int> mismatches(xs.size(), 0);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < xs.size(); ++i)
    threads.emplace_back([&, i] {
      Workspace<pf::SwiGLU> ws;
      Matrix y(xs[i].rows(), d);
      for (int rep = 0; rep < 20; ++rep) {
        moe.forward(pf::cview(xs[i]), pf::view(y), ws, pf::Context{1});
        mismatches[i] += !(y.array() == expected[i].array()).all() || ws.aux_loss != expected_aux[i];
      }
    });
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < xs.size(); ++i) CHECK(mismatches[i] == 0);
}

namespace {

/// A router reading x's first E columns times 4: token t's ranking is set by those columns. Rows of `ranks`
/// give each token's experts best first; the rest of the row is random (it only moves the experts' outputs).
Matrix routed_input(const std::vector<std::vector<Index>>& ranks, Index n_exp, Index d, unsigned seed) {
  Matrix x = pft::random_matrix(Index(ranks.size()), d, seed);
  for (std::size_t t = 0; t < ranks.size(); ++t) {
    x.row(Index(t)).head(n_exp).setZero();
    float v = 1.0f;
    for (Index e : ranks[t]) {
      x(Index(t), e) = v;
      v *= 0.5f;
    }
  }
  return x;
}

pf::Dense identity_router(Index n_exp, Index d) {
  Matrix w = Matrix::Zero(n_exp, d);
  for (Index e = 0; e < n_exp; ++e) w(e, e) = 4.0f;
  return pf::Dense(w);
}

}  // namespace

TEST_CASE("layers/moe: capacity drops choices in priority order", "[layers][moe][capacity]") {
  const Index d = 8, h = 16;
  SECTION("k = 1: an expert full after three first choices drops the later tokens; they output zero") {
    // cap = ceil(1 · 6 · 1 / 2) = 3; tokens 0, 1, 2, 3, 5 want expert 0, token 4 expert 1.
    MoE<pf::ReLU> moe(identity_router(2, d), make_experts<pf::ReLU>(2, d, h, 11), 1, pf::MoEOptions{false, 1.0});
    const Matrix x = routed_input({{0, 1}, {0, 1}, {0, 1}, {0, 1}, {1, 0}, {0, 1}}, 2, d, 12);
    for (int threads : {1, 2}) {
      Workspace<pf::ReLU> ws;
      const Matrix y = moe.forward(x, ws, pf::Context{threads});
      CHECK(ws.capacity == 3);
      for (Index t = 0; t < 6; ++t) {
        INFO("token " << t);
        CHECK(ws.dropped(t, 0) == (t == 3 || t == 5));
        CHECK(ws.token_dropped(t) == (t == 3 || t == 5));
        CHECK(ws.expert_of(t, 0) == (t == 4 ? 1 : 0));
      }
      CHECK(y.row(3).isZero(0));
      CHECK(y.row(5).isZero(0));
      CHECK(ws.dropped_count() == 2);
      CHECK(std::vector<Index>(ws.expert_counts().begin(), ws.expert_counts().end()) == std::vector<Index>{3, 1});
      CHECK(std::vector<Index>(ws.expert_requests().begin(), ws.expert_requests().end()) == std::vector<Index>{5, 1});
      const Reference ref = oracle(moe, x);
      CHECK(rel_err(y, ref.y) < 1e-5);
      // Accepted tokens are as without capacity: no renormalization after drops.
      MoE<pf::ReLU> unlimited = moe;
      unlimited.set_options(pf::MoEOptions{false, 0.0});
      const Matrix free_y = unlimited.forward(x, pf::Context{threads});
      for (Index t : {0, 1, 2, 4}) CHECK((y.row(t).array() == free_y.row(t).array()).all());
    }
  }
  SECTION("k = 2: first choices of all tokens come before second choices") {
    // cap = ceil(0.5 · 5 · 2 / 3) = 2. First choices fill expert 0 with tokens 0, 1 (token 4's is dropped),
    // expert 1 takes token 2, expert 2 token 3; of the second choices only token 0's (expert 1) fits.
    MoE<pf::GELU> moe(identity_router(3, d), make_experts<pf::GELU>(3, d, h, 21), 2, pf::MoEOptions{true, 0.5});
    const Matrix x = routed_input({{0, 1, 2}, {0, 1, 2}, {1, 0, 2}, {2, 0, 1}, {0, 1, 2}}, 3, d, 22);
    for (int threads : {1, 2}) {
      Workspace<pf::GELU> ws;
      const Matrix y = moe.forward(x, ws, pf::Context{threads});
      CHECK(ws.capacity == 2);
      const std::vector<std::vector<bool>> dropped{{false, false}, {false, true}, {false, true}, {false, true},
                                                   {true, true}};
      for (Index t = 0; t < 5; ++t)
        for (int c = 0; c < 2; ++c) {
          INFO("token " << t << " choice " << c);
          CHECK(ws.dropped(t, c) == dropped[std::size_t(t)][std::size_t(c)]);
        }
      CHECK(ws.token_dropped(4));
      CHECK_FALSE(ws.token_dropped(1));
      CHECK(y.row(4).isZero(0));
      CHECK(ws.dropped_count() == 5);
      CHECK(std::vector<Index>(ws.expert_counts().begin(), ws.expert_counts().end()) == std::vector<Index>{2, 2, 1});
      CHECK(std::vector<Index>(ws.expert_requests().begin(), ws.expert_requests().end()) ==
            std::vector<Index>{5, 4, 1});
      CHECK(std::vector<Index>(ws.expert_tokens(1).begin(), ws.expert_tokens(1).end()) == std::vector<Index>{2, 0});
      const Reference ref = oracle(moe, x);
      check_routing(moe, ws, ref);
      CHECK(rel_err(y, ref.y) < 1e-5);
      // Token 1 keeps only its first choice, weighted by its renormalized gate (< 1): not renormalized again.
      CHECK(ws.gate(1, 0) < 1.0f);
      const VectorD e0 = expert_d(moe.experts()[0], x.row(1).cast<double>().transpose());
      CHECK((y.row(1).cast<double>().transpose() - ref.gates[1][0] * e0).cwiseAbs().maxCoeff() < 1e-5);
    }
  }
  SECTION("the capacity formula") {
    auto moe = make_moe<pf::ReLU>(8, 4, 4, 2, 1, pf::MoEOptions{true, 1.25});
    CHECK(moe.capacity_for(512) == 160);  // 1.25 · 512 · 2 / 8
    CHECK(moe.capacity_for(3) == 1);      // ceil(0.9375)
    CHECK(moe.capacity_for(1) == 1);
    moe.set_options({true, 100.0});
    CHECK(moe.capacity_for(10) == 10);  // never more than n
    moe.set_options({true, 0.0});
    CHECK(moe.capacity_for(10) == 10);
    moe.set_options({true, -1.0});
    CHECK(moe.capacity_for(10) == 10);
    auto eleven = make_moe<pf::ReLU>(11, 4, 4, 1, 1, pf::MoEOptions{true, 1.1});
    CHECK(eleven.capacity_for(10) == 1);  // 1.1 · 10 / 11 is 1 up to rounding
  }
}

TEST_CASE("layers/moe: auxiliary loss by hand", "[layers][moe][aux]") {
  const Index d = 6, h = 8;
  SECTION("k = 1, two experts") {
    MoE<pf::ReLU> moe(identity_router(2, d), make_experts<pf::ReLU>(2, d, h, 31), 1);
    Matrix x = Matrix::Zero(3, d);
    x(0, 0) = 0.25f;  // router logits 4·x: (1, 0), (2, 0), (0, 3)
    x(1, 0) = 0.5f;
    x(2, 1) = 0.75f;
    Workspace<pf::ReLU> ws;
    moe.forward(x, ws);
    const double e = std::exp(1.0);
    const double p0[3] = {e / (e + 1), e * e / (e * e + 1), 1 / (1 + e * e * e)};  // probability of expert 0
    const double P0 = (p0[0] + p0[1] + p0[2]) / 3, P1 = 1 - P0;
    const double f0 = 2.0 / 3, f1 = 1.0 / 3;  // tokens 0, 1 pick expert 0; token 2 expert 1
    CHECK(ws.aux_loss == Approx(2 * (f0 * P0 + f1 * P1)).epsilon(1e-6));
    for (Index t = 0; t < 3; ++t) CHECK(ws.router_probs()(t, 0) == Approx(p0[t]).epsilon(1e-6));
  }
  SECTION("k = 2, three experts") {
    MoE<pf::ReLU> moe(identity_router(3, d), make_experts<pf::ReLU>(3, d, h, 41), 2);
    // Rankings (0, 1, 2), (1, 0, 2), (2, 0, 1): requests 3, 2, 1 of 6 choices.
    const Matrix x = routed_input({{0, 1, 2}, {1, 0, 2}, {2, 0, 1}}, 3, d, 42);
    Workspace<pf::ReLU> ws;
    moe.forward(x, ws);
    double P[3] = {0, 0, 0};
    for (Index t = 0; t < 3; ++t) {
      double z[3], s = 0;
      for (Index e = 0; e < 3; ++e) s += z[e] = std::exp(4.0 * x(t, e));
      for (Index e = 0; e < 3; ++e) P[e] += z[e] / s / 3;
    }
    const double f[3] = {3.0 / 6, 2.0 / 6, 1.0 / 6};
    CHECK(ws.aux_loss == Approx(3 * (f[0] * P[0] + f[1] * P[1] + f[2] * P[2])).epsilon(1e-6));
    CHECK(ws.aux_loss > 1.0);
  }
  SECTION("uniform routing (zero router weights) gives 1") {
    for (int k : {1, 2, 4})
      for (bool renormalize : {true, false}) {
        MoE<pf::GELU> moe(pf::Dense(d, 4, false), make_experts<pf::GELU>(4, d, h, 51), k, {renormalize, 0.0});
        Workspace<pf::GELU> ws;
        moe.forward(pft::random_matrix(9, d, 52), ws);
        CHECK(ws.aux_loss == Approx(1.0).epsilon(1e-6));
        for (int c = 0; c < k; ++c) {
          CHECK(ws.expert_of(5, c) == c);  // ties go to the lower index
          CHECK(ws.gate(5, c) == Approx(renormalize ? 1.0 / k : 0.25));
        }
      }
  }
}

namespace {

template <typename Act>
using MoEEncoderPre = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, Act, pf::NormPlacement::pre,
                                       pf::NoRotary, MoE<Act>>;
template <typename Act>
using MoEEncoderPost = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, Act, pf::NormPlacement::post,
                                        pf::NoRotary, MoE<Act>>;

constexpr Index d_model = 16, n_heads = 4, d_hidden = 24;

template <typename Act>
typename pf::MultiHeadAttention<pf::FullAttention, pf::Dense> attention(unsigned seed) {
  return {dense(d_model, d_model, seed), dense(d_model, d_model, seed + 1), dense(d_model, d_model, seed + 2),
          dense(d_model, d_model, seed + 3), pf::HeadConfig{n_heads}};
}

pf::LayerNorm layer_norm(unsigned seed) {
  return pf::LayerNorm(pf::Vector((pft::random_matrix(d_model, 1, seed, 0.2f).array() + 1.0f).matrix()),
                       pf::Vector(pft::random_matrix(d_model, 1, seed + 1, 0.1f).col(0)));
}

/// The rows of the layer's FFN input the MoE saw: checks the layer's routing (ws, the MoE's workspace in the
/// layer's) against the oracle, then returns the oracle's output.
template <typename Act>
MatrixD moe_reference(const MoE<Act>& moe, const Workspace<Act>& ws, const Matrix& ffn_in) {
  const Reference ref = oracle(moe, ffn_in);
  REQUIRE(std::none_of(ref.ambiguous.begin(), ref.ambiguous.end(), [](bool b) { return b; }));
  check_routing(moe, ws, ref);
  return ref.y;
}

}  // namespace

TEMPLATE_TEST_CASE("layers/moe: MoE as the FFN of encoder layers (pre- and post-norm)", "[layers][moe][blocks]",
                   MoEEncoderPre<pf::GELU>, MoEEncoderPost<pf::GELU>, MoEEncoderPre<pf::SwiGLU>,
                   MoEEncoderPost<pf::SwiGLU>) {
  using Layer = TestType;
  using Act = typename Layer::FFN::activation_type;
  const Index batch = 2, seq = 12, n = batch * seq;
  // Capacity 0.25: ceil(0.25 · 24 · 2 / 4) = 3 rows per expert, so at least half the tokens lose every choice.
  Layer layer(attention<Act>(1), make_moe<Act>(4, d_model, d_hidden, 2, 9, pf::MoEOptions{true, 0.25}),
              layer_norm(20), layer_norm(30));
  const Matrix x = pft::random_matrix(n, d_model, 2);
  for (int threads : {1, 2}) {
    const pf::Context ctx{threads};
    Matrix y(n, d_model);
    typename Layer::Workspace ws;
    typename Layer::Attention::Workspace attn_ws;
    layer.forward(pf::cview(x), batch, pf::MaskSpec{}, pf::view(y), ws, ctx);
    const auto& moe = layer.ffn();
    const auto& moe_ws = ws.ffn;
    REQUIRE(moe_ws.tokens == n);
    CHECK(moe_ws.capacity == 3);
    Index fully_dropped = 0;
    for (Index t = 0; t < n; ++t) fully_dropped += moe_ws.token_dropped(t);
    CHECK(fully_dropped >= n / 2);
    // The residual wiring spelled out with the layer's own sublayers; the FFN from the float64 oracle.
    Matrix attn_out(n, d_model), h(n, d_model), ffn_in(n, d_model);
    MatrixD ref;
    if constexpr (Layer::placement == pf::NormPlacement::pre) {
      Matrix normed(n, d_model);
      layer.norm1().forward(pf::cview(x), pf::view(normed));
      layer.self_attn().forward(pf::cview(normed), batch, pf::MaskSpec{}, pf::view(attn_out), attn_ws, ctx);
      h = x + attn_out;
      layer.norm2().forward(pf::cview(h), pf::view(ffn_in));
      ref = h.cast<double>() + moe_reference(moe, moe_ws, ffn_in);
      for (Index t = 0; t < n; ++t)
        if (moe_ws.token_dropped(t)) CHECK((y.row(t).array() == h.row(t).array()).all());  // the residual only
    } else {
      layer.self_attn().forward(pf::cview(x), batch, pf::MaskSpec{}, pf::view(attn_out), attn_ws, ctx);
      h = x + attn_out;
      layer.norm1().forward(pf::cview(h), pf::view(h));
      ffn_in = h;
      const MatrixD sum = h.cast<double>() + moe_reference(moe, moe_ws, ffn_in);
      ref = sum;
      for (Index t = 0; t < n; ++t) {  // norm2 in float64
        const double mean = sum.row(t).mean();
        const double var = (sum.row(t).array() - mean).square().mean();
        for (Index c = 0; c < d_model; ++c)
          ref(t, c) = (sum(t, c) - mean) / std::sqrt(var + 1e-5) * layer.norm2().gamma()(c) + layer.norm2().beta()(c);
      }
      Matrix normed_h(n, d_model);
      layer.norm2().forward(pf::cview(h), pf::view(normed_h));
      for (Index t = 0; t < n; ++t)
        if (moe_ws.token_dropped(t)) CHECK((y.row(t).array() == normed_h.row(t).array()).all());  // norm2(h + 0)
    }
    INFO("threads " << threads);
    CHECK(rel_err(y, ref) < 2e-5);
  }
}

TEMPLATE_TEST_CASE_SIG("layers/moe: MoE as the FFN of decoder layers", "[layers][moe][blocks]",
                       ((pf::NormPlacement P), P), pf::NormPlacement::pre, pf::NormPlacement::post) {
  using Layer = pf::DecoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::ReLU, P, pf::NoRotary,
                                 pf::FullAttention, MoE<pf::ReLU>>;
  const Index batch = 2, seq = 9, mem = 7, n = batch * seq;
  Layer layer(attention<pf::ReLU>(1), attention<pf::ReLU>(5), make_moe<pf::ReLU>(3, d_model, d_hidden, 2, 13),
              layer_norm(20), layer_norm(30), layer_norm(40));
  const Matrix x = pft::random_matrix(n, d_model, 3), memory = pft::random_matrix(batch * mem, d_model, 4);
  const pf::DecoderMasks masks{};
  const pf::Context ctx{2};
  Matrix y(n, d_model);
  typename Layer::Workspace ws;
  layer.forward(pf::cview(x), pf::cview(memory), batch, masks, pf::view(y), ws, ctx);
  typename Layer::SelfAttention::Workspace self_ws;
  typename Layer::CrossAttention::Workspace cross_ws;
  Matrix a(n, d_model), h1(n, d_model), h2(n, d_model), normed(n, d_model);
  MatrixD ref;
  if constexpr (P == pf::NormPlacement::pre) {
    layer.norm1().forward(pf::cview(x), pf::view(normed));
    layer.self_attn().forward(pf::cview(normed), batch, masks.self, pf::view(a), self_ws, ctx);
    h1 = x + a;
    layer.norm2().forward(pf::cview(h1), pf::view(normed));
    layer.cross_attn().forward(pf::cview(normed), batch, pf::cview(memory), masks.cross, pf::view(a), cross_ws, ctx);
    h2 = h1 + a;
    layer.norm3().forward(pf::cview(h2), pf::view(normed));
    ref = h2.cast<double>() + moe_reference(layer.ffn(), ws.ffn, normed);
  } else {
    layer.self_attn().forward(pf::cview(x), batch, masks.self, pf::view(a), self_ws, ctx);
    h1 = x + a;
    layer.norm1().forward(pf::cview(h1), pf::view(h1));
    layer.cross_attn().forward(pf::cview(h1), batch, pf::cview(memory), masks.cross, pf::view(a), cross_ws, ctx);
    h2 = h1 + a;
    layer.norm2().forward(pf::cview(h2), pf::view(h2));
    const MatrixD sum = h2.cast<double>() + moe_reference(layer.ffn(), ws.ffn, h2);
    ref = sum;
    for (Index t = 0; t < n; ++t) {
      const double mean = sum.row(t).mean();
      const double var = (sum.row(t).array() - mean).square().mean();
      for (Index c = 0; c < d_model; ++c)
        ref(t, c) = (sum(t, c) - mean) / std::sqrt(var + 1e-5) * layer.norm3().gamma()(c) + layer.norm3().beta()(c);
    }
  }
  CHECK(rel_err(y, ref) < 2e-5);
  // And inside the decoder stack.
  std::vector<Layer> layers;
  layers.push_back(std::move(layer));
  pf::Decoder<Layer> stack(std::move(layers));
  CHECK(stack.forward(x, memory, batch).allFinite());
}

TEST_CASE("layers/moe: bad construction and forward arguments throw with names and shapes", "[layers][moe][errors]") {
  const Index d = 16, h = 24;
  using M = MoE<pf::ReLU>;
  CHECK_THROWS_AS(M(dense(d, 4, 1), {}, 1), pf::config_error);
  CHECK_THROWS_WITH(M(dense(d, 4, 1), {}, 1), Catch::Contains("MixtureOfExperts: experts is empty"));
  CHECK_THROWS_WITH(M(dense(d, 4, 1), make_experts<pf::ReLU>(4, d, h, 1), 0),
                    Catch::Contains("MixtureOfExperts: top_k is 0, expected 1..4"));
  CHECK_THROWS_WITH(M(dense(d, 4, 1), make_experts<pf::ReLU>(4, d, h, 1), 5),
                    Catch::Contains("MixtureOfExperts: top_k is 5, expected 1..4"));
  CHECK_THROWS_AS(M(dense(d, 5, 1), make_experts<pf::ReLU>(4, d, h, 1), 2), pf::shape_error);
  CHECK_THROWS_WITH(M(dense(d, 5, 1), make_experts<pf::ReLU>(4, d, h, 1), 2),
                    Catch::Contains("MixtureOfExperts: router weight has shape (5, 16), expected (4, 16) (n_experts, d)"));
  CHECK_THROWS_WITH(M(dense(d + 1, 4, 1), make_experts<pf::ReLU>(4, d, h, 1), 2),
                    Catch::Contains("router weight has shape (4, 17), expected (4, 16)"));
  auto experts = make_experts<pf::ReLU>(4, d, h, 1);
  experts[2] = make_expert<pf::ReLU>(12, h, 3);
  CHECK_THROWS_WITH(M(dense(d, 4, 1), experts, 2),
                    Catch::Contains("MixtureOfExperts: experts[2] maps 12 -> 24 -> 12, expected 16 -> 24 -> 16"));
  experts[2] = make_expert<pf::ReLU>(d, h + 1, 3);
  CHECK_THROWS_WITH(M(dense(d, 4, 1), experts, 2),
                    Catch::Contains("experts[2] maps 16 -> 25 -> 16, expected 16 -> 24 -> 16"));
  CHECK_THROWS_WITH(M(dense(d, 4, 1), make_experts<pf::ReLU>(4, d, h, 1), 2, pf::MoEOptions{true, std::nan("")}),
                    Catch::Contains("options.capacity_factor is nan"));
  auto moe = make_moe<pf::ReLU>(4, d, h, 2, 1);
  Matrix y(3, d);
  CHECK_THROWS_WITH(moe.forward(pf::cview(pft::random_matrix(3, d - 1, 1)), pf::view(y), {}),
                    Catch::Contains("MixtureOfExperts::forward: x has shape (3, 15), expected (n, 16)"));
  Matrix bad_y(2, d);
  CHECK_THROWS_WITH(moe.forward(pf::cview(pft::random_matrix(3, d, 1)), pf::view(bad_y), {}),
                    Catch::Contains("MixtureOfExperts::forward: y has shape (2, 16), expected (3, 16)"));
  CHECK_THROWS_WITH(moe.forward(pf::cview(pft::random_matrix(3, d, 1)), pf::view(y), pf::Context{0}),
                    Catch::Contains("threads is 0"));
  CHECK_THROWS_WITH(M().forward(pft::random_matrix(3, d, 1)), Catch::Contains("MixtureOfExperts::forward: no experts"));
  // A layer refuses an MoE of another width.
  using Layer = MoEEncoderPre<pf::ReLU>;
  CHECK_THROWS_WITH(Layer(attention<pf::ReLU>(1), make_moe<pf::ReLU>(4, 12, h, 2, 1), layer_norm(2), layer_norm(3)),
                    Catch::Contains("EncoderLayer: d_model of attention 16, FFN 12"));
}
