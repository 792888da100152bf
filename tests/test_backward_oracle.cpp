// Checks every backward of tests/backward_oracle.hpp against central finite differences of its forward, for the loss
// L = Σ y ⊙ G with a fixed random G (deterministic seeds), plus a few forward values worked out by hand.
// Set BACKWARD_ORACLE_VERBOSE=1 to print the largest relative error seen for each gradient.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backward_oracle.hpp"

namespace {

namespace bo = backward_oracle;
using bo::Index;
using bo::MatD;
using bo::VecD;

constexpr double kStep = 1e-5;       // central-difference step (1e-5 gave the smallest errors; 1e-6 is ~10x worse)
constexpr double kTolerance = 1e-6;  // on ||analytic − numeric||_F / max(||numeric||_F, 1e-12)
constexpr double kInf = std::numeric_limits<double>::infinity();

// The largest relative error seen for each gradient name, printed at exit when BACKWARD_ORACLE_VERBOSE is set.
std::map<std::string, double>& worst_errors() {
  static struct Log {
    std::map<std::string, double> worst;
    ~Log() {
      if (std::getenv("BACKWARD_ORACLE_VERBOSE") == nullptr) return;
      for (const auto& [name, error] : worst) std::printf("%-26s %.2e\n", name.c_str(), error);
    }
  } log;
  return log.worst;
}

// Entries uniform in [−scale, scale).
MatD random_matrix(Index rows, Index cols, std::mt19937& rng, double scale = 1.0) {
  std::uniform_real_distribution<double> uniform(-scale, scale);
  MatD m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = uniform(rng);
  return m;
}

VecD random_vector(Index size, std::mt19937& rng, double scale = 1.0) {
  std::uniform_real_distribution<double> uniform(-scale, scale);
  VecD v(size);
  for (Index i = 0; i < size; ++i) v(i) = uniform(rng);
  return v;
}

// A norm's gain: 1 + uniform[−0.3, 0.3).
VecD random_gain(Index size, std::mt19937& rng) {
  VecD v = random_vector(size, rng, 0.3);
  for (Index i = 0; i < size; ++i) v(i) += 1.0;
  return v;
}

// Σ_ij y(i, j) · weights(i, j): the scalar loss whose gradient with respect to y is `weights`.
double weighted_sum(const MatD& y, const MatD& weights) {
  if (y.rows() != weights.rows() || y.cols() != weights.cols()) throw std::logic_error("weighted_sum: shape mismatch");
  double total = 0.0;
  for (Index i = 0; i < y.rows(); ++i)
    for (Index j = 0; j < y.cols(); ++j) total += y(i, j) * weights(i, j);
  return total;
}

// Central differences (L(p + h) − L(p − h)) / (2h) for every entry of param, which is changed in place and restored.
// The divisor is the step actually taken after rounding.
template <class Param>
Param numeric_gradient(Param& param, const std::function<double()>& loss, double step = kStep) {
  Param grad = Param::Zero(param.rows(), param.cols());
  for (Index i = 0; i < param.size(); ++i) {
    double& entry = param.data()[i];
    const double saved = entry, plus = saved + step, minus = saved - step;
    entry = plus;
    const double loss_plus = loss();
    entry = minus;
    const double loss_minus = loss();
    entry = saved;
    grad.data()[i] = (loss_plus - loss_minus) / (plus - minus);
  }
  return grad;
}

// Relative Frobenius error of analytic against numeric, recorded under name and required ≤ kTolerance.
template <class Grad>
void check_gradient(const std::string& name, const Grad& analytic, const Grad& numeric) {
  INFO("gradient " << name);
  REQUIRE(analytic.rows() == numeric.rows());
  REQUIRE(analytic.cols() == numeric.cols());
  const double error = (analytic - numeric).norm() / std::max(numeric.norm(), 1e-12);
  double& worst = worst_errors()[name];
  worst = std::max(worst, error);
  CHECK(error <= kTolerance);
}

// For a gradient that is zero in exact arithmetic, where a relative error would compare rounding noise with rounding
// noise: both the analytic value and the finite differences must be tiny in absolute terms (recorded: the larger).
template <class Grad>
void check_zero_gradient(const std::string& name, const Grad& analytic, const Grad& numeric) {
  INFO("gradient " << name << " (zero in exact arithmetic)");
  REQUIRE(analytic.rows() == numeric.rows());
  REQUIRE(analytic.cols() == numeric.cols());
  double& worst = worst_errors()[name + " (abs)"];
  worst = std::max({worst, analytic.norm(), numeric.norm()});
  CHECK(analytic.norm() <= 1e-12);
  CHECK(numeric.norm() <= 1e-7);
}

double min_abs(const MatD& m) { return m.cwiseAbs().minCoeff(); }

bool row_is_zero(const MatD& m, Index row) {
  for (Index j = 0; j < m.cols(); ++j)
    if (m(row, j) != 0.0) return false;
  return true;
}

}  // namespace

// ==== Linear ========================================================================================================

TEST_CASE("backward oracle: linear", "[oracle]") {
  SECTION("forward by hand") {
    MatD x(1, 2), w(2, 2);
    x << 1, 2;
    w << 3, 4, 5, 6;
    VecD b(2);
    b << 1, -1;
    const MatD y = bo::linear(x, w, b);
    CHECK(y(0, 0) == 12.0);  // 1 + 1·3 + 2·4
    CHECK(y(0, 1) == 16.0);  // −1 + 1·5 + 2·6
    const MatD y_no_bias = bo::linear(x, w, VecD());
    CHECK(y_no_bias(0, 0) == 11.0);
    CHECK(y_no_bias(0, 1) == 17.0);
  }

  for (const bool with_bias : {true, false}) {
    DYNAMIC_SECTION("finite differences, bias " << with_bias) {
      std::mt19937 rng(11);
      MatD x = random_matrix(5, 6, rng), w = random_matrix(4, 6, rng);
      VecD b = with_bias ? random_vector(4, rng) : VecD();
      const MatD weights = random_matrix(5, 4, rng);
      const bo::LinearGrad g = bo::linear_backward(x, w, b, weights);
      const auto loss = [&] { return weighted_sum(bo::linear(x, w, b), weights); };
      check_gradient("linear.dx", g.dx, numeric_gradient(x, loss));
      check_gradient("linear.dw", g.dw, numeric_gradient(w, loss));
      if (with_bias) {
        check_gradient("linear.db", g.db, numeric_gradient(b, loss));
      } else {
        CHECK(g.db.size() == 0);
      }
    }
  }
}

// ==== Norms =========================================================================================================

TEST_CASE("backward oracle: layer norm and RMS norm", "[oracle]") {
  SECTION("forward by hand: biased variance, eps inside the square root") {
    MatD x(1, 3);
    x << 1, 2, 3;  // mean 2, biased variance 2/3
    const VecD ones = VecD::Ones(3), zeros = VecD::Zero(3);
    const MatD y0 = bo::layer_norm(x, ones, zeros, 0.0);
    CHECK(y0(0, 0) == Approx(-std::sqrt(1.5)).epsilon(1e-14));
    CHECK(y0(0, 1) == Approx(0.0).margin(1e-15));
    CHECK(y0(0, 2) == Approx(std::sqrt(1.5)).epsilon(1e-14));
    const MatD y1 = bo::layer_norm(x, ones, zeros, 1.0 / 3.0);  // √(2/3 + 1/3) = 1
    CHECK(y1(0, 0) == Approx(-1.0).epsilon(1e-14));
    CHECK(y1(0, 2) == Approx(1.0).epsilon(1e-14));
    MatD r(1, 2);
    r << 3, 4;  // mean square 12.5; + 3.5 = 16
    VecD gain(2);
    gain << 2, -1;
    const MatD yr = bo::rms_norm(r, gain, 3.5);
    CHECK(yr(0, 0) == Approx(1.5).epsilon(1e-14));
    CHECK(yr(0, 1) == Approx(-1.0).epsilon(1e-14));
  }

  for (const double eps : {1e-5, 0.5}) {
    DYNAMIC_SECTION("layer norm finite differences, eps " << eps) {
      std::mt19937 rng(21);
      MatD x = random_matrix(4, 8, rng, 2.0);
      VecD gamma = random_gain(8, rng), beta = random_vector(8, rng);
      const MatD weights = random_matrix(4, 8, rng);
      const bo::NormGrad g = bo::layer_norm_backward(x, gamma, beta, eps, weights);
      const auto loss = [&] { return weighted_sum(bo::layer_norm(x, gamma, beta, eps), weights); };
      check_gradient("layer_norm.dx", g.dx, numeric_gradient(x, loss));
      check_gradient("layer_norm.dgamma", g.dgamma, numeric_gradient(gamma, loss));
      check_gradient("layer_norm.dbeta", g.dbeta, numeric_gradient(beta, loss));
    }
    DYNAMIC_SECTION("RMS norm finite differences, eps " << eps) {
      std::mt19937 rng(22);
      MatD x = random_matrix(4, 8, rng, 2.0);
      VecD gamma = random_gain(8, rng);
      const MatD weights = random_matrix(4, 8, rng);
      const bo::NormGrad g = bo::rms_norm_backward(x, gamma, eps, weights);
      const auto loss = [&] { return weighted_sum(bo::rms_norm(x, gamma, eps), weights); };
      check_gradient("rms_norm.dx", g.dx, numeric_gradient(x, loss));
      check_gradient("rms_norm.dgamma", g.dgamma, numeric_gradient(gamma, loss));
      CHECK(g.dbeta.size() == 0);
    }
  }

  SECTION("layer norm without beta") {
    std::mt19937 rng(23);
    MatD x = random_matrix(3, 8, rng);
    VecD gamma = random_gain(8, rng);
    const MatD weights = random_matrix(3, 8, rng);
    const bo::NormGrad g = bo::layer_norm_backward(x, gamma, VecD(), 1e-5, weights);
    const auto loss = [&] { return weighted_sum(bo::layer_norm(x, gamma, VecD(), 1e-5), weights); };
    check_gradient("layer_norm.dx", g.dx, numeric_gradient(x, loss));
    check_gradient("layer_norm.dgamma", g.dgamma, numeric_gradient(gamma, loss));
    CHECK(g.dbeta.size() == 0);
  }
}

// ==== Activations ===================================================================================================

TEST_CASE("backward oracle: activations", "[oracle]") {
  using bo::Act;
  SECTION("values by hand") {
    CHECK(bo::activation(Act::relu, -2.0) == 0.0);
    CHECK(bo::activation(Act::relu, 0.0) == 0.0);
    CHECK(bo::activation(Act::relu, 1.5) == 1.5);
    CHECK(bo::activation_grad(Act::relu, 0.0) == 0.0);  // relu'(0) = 0 by convention
    CHECK(bo::activation(Act::gelu_erf, 1.0) == Approx(0.8413447460685429).epsilon(1e-14));
    CHECK(bo::activation(Act::gelu_erf, -1.5) == Approx(-0.10021080190328713).epsilon(1e-13));
    CHECK(bo::activation(Act::gelu_tanh, 1.0) == Approx(0.8411919906082768).epsilon(1e-14));
    CHECK(bo::activation(Act::silu, 1.0) == Approx(0.7310585786300049).epsilon(1e-14));
    CHECK(bo::activation(Act::silu, -800.0) == 0.0);  // no overflow in σ
    CHECK(bo::activation_grad(Act::gelu_erf, 0.0) == 0.5);
    CHECK(bo::activation_grad(Act::gelu_tanh, 0.0) == 0.5);
    CHECK(bo::activation_grad(Act::silu, 0.0) == 0.5);
    for (const Act a : {Act::gelu_erf, Act::gelu_tanh, Act::silu}) {
      CHECK(std::isfinite(bo::activation_grad(a, 40.0)));
      CHECK(std::isfinite(bo::activation_grad(a, -40.0)));
    }
  }

  // Points from −4.5 to 4.4, none within 1e-3 of ReLU's kink at 0.
  VecD points(25);
  for (Index i = 0; i < points.size(); ++i) points(i) = -4.489 + 0.37 * double(i);
  REQUIRE(points.cwiseAbs().minCoeff() > 1e-3);
  const std::map<Act, std::string> names = {
      {Act::relu, "relu"}, {Act::gelu_erf, "gelu_erf"}, {Act::gelu_tanh, "gelu_tanh"}, {Act::silu, "silu"}};
  for (const auto& entry : names) {
    const Act a = entry.first;  // (a plain variable: clang 14 cannot capture structured bindings in lambdas)
    const std::string& name = entry.second;
    DYNAMIC_SECTION("finite differences, " << name) {
      VecD analytic(points.size()), numeric(points.size());
      for (Index i = 0; i < points.size(); ++i) {
        VecD x = points.segment(i, 1);
        analytic(i) = bo::activation_grad(a, x(0));
        numeric(i) = numeric_gradient(x, [&] { return bo::activation(a, x(0)); })(0);
      }
      check_gradient("activation_grad." + name, analytic, numeric);
    }
  }
}

// ==== Feed-forward ==================================================================================================

namespace {

// Random FFN weights d -> f -> d, of the given kind.
bo::FFNWeights random_ffn(Index d, Index f, bo::Act act, bool gated, bool biases, std::mt19937& rng) {
  bo::FFNWeights w;
  w.act = act;
  w.gated = gated;
  w.w_up = random_matrix(f, d, rng, 0.6);
  w.w_down = random_matrix(d, f, rng, 0.6);
  if (biases) {
    w.b_up = random_vector(f, rng, 0.5);
    w.b_down = random_vector(d, rng, 0.5);
  }
  if (gated) {
    w.w_gate = random_matrix(f, d, rng, 0.6);
    if (biases) w.b_gate = random_vector(f, rng, 0.5);
  }
  return w;
}

// FD checks of every gradient of ffn_backward for x (n, d) with hidden width f.
void check_ffn(bo::Act act, bool gated, bool biases, unsigned seed) {
  std::mt19937 rng(seed);
  const Index n = 5, d = 8, f = 12;
  MatD x = random_matrix(n, d, rng, 1.5);
  bo::FFNWeights w = random_ffn(d, f, act, gated, biases, rng);
  const MatD weights = random_matrix(n, d, rng);
  if (act == bo::Act::relu && !gated) {
    // FD across ReLU's kink is meaningless: this seed keeps every pre-activation ≥ 1e-3 away from 0 (a step of 1e-5
    // moves them by far less).
    REQUIRE(min_abs(bo::linear(x, w.w_up, w.b_up)) > 1e-3);
  }
  const bo::FFNGrad g = bo::ffn_backward(x, w, weights);
  const auto loss = [&] { return weighted_sum(bo::ffn(x, w), weights); };
  check_gradient("ffn.dx", g.dx, numeric_gradient(x, loss));
  check_gradient("ffn.dw_up", g.dw_up, numeric_gradient(w.w_up, loss));
  check_gradient("ffn.dw_down", g.dw_down, numeric_gradient(w.w_down, loss));
  if (biases) {
    check_gradient("ffn.db_up", g.db_up, numeric_gradient(w.b_up, loss));
    check_gradient("ffn.db_down", g.db_down, numeric_gradient(w.b_down, loss));
  } else {
    CHECK(g.db_up.size() == 0);
    CHECK(g.db_down.size() == 0);
  }
  if (gated) {
    check_gradient("ffn.dw_gate", g.dw_gate, numeric_gradient(w.w_gate, loss));
    if (biases) check_gradient("ffn.db_gate", g.db_gate, numeric_gradient(w.b_gate, loss));
  } else {
    CHECK(g.dw_gate.size() == 0);
  }
  if (!biases || !gated) CHECK(g.db_gate.size() == 0);
}

}  // namespace

TEST_CASE("backward oracle: feed-forward, plain and SwiGLU", "[oracle]") {
  SECTION("forward by hand") {
    // d = 1, f = 2: up = [x, −x], y = w_down · act(up).
    bo::FFNWeights w;
    w.w_up = MatD(2, 1);
    w.w_up << 1, -1;
    w.w_down = MatD(1, 2);
    w.w_down << 2, 3;
    MatD x(1, 1);
    x << 1.0;
    w.act = bo::Act::relu;
    CHECK(bo::ffn(x, w)(0, 0) == 2.0);
    w.act = bo::Act::silu;
    CHECK(bo::ffn(x, w)(0, 0) == Approx(2.0 * 0.7310585786300049 + 3.0 * -(1.0 - 0.7310585786300049)).epsilon(1e-14));
    w.gated = true;  // y = w_down · (silu(gate) ⊙ up), gate = [0.5 x, 2 x]
    w.w_gate = MatD(2, 1);
    w.w_gate << 0.5, 2.0;
    const double expected =
        2.0 * bo::activation(bo::Act::silu, 0.5) * 1.0 + 3.0 * bo::activation(bo::Act::silu, 2.0) * -1.0;
    CHECK(bo::ffn(x, w)(0, 0) == Approx(expected).epsilon(1e-14));
  }
  SECTION("ReLU with biases") { check_ffn(bo::Act::relu, false, true, 31); }
  SECTION("ReLU without biases") { check_ffn(bo::Act::relu, false, false, 32); }
  SECTION("GELU (erf) without biases") { check_ffn(bo::Act::gelu_erf, false, false, 33); }
  SECTION("GELU (tanh) with biases") { check_ffn(bo::Act::gelu_tanh, false, true, 34); }
  SECTION("SiLU with biases") { check_ffn(bo::Act::silu, false, true, 35); }
  SECTION("SwiGLU without biases (Llama)") { check_ffn(bo::Act::relu, true, false, 36); }  // act unused when gated
  SECTION("SwiGLU with biases") { check_ffn(bo::Act::gelu_erf, true, true, 37); }
}

// ==== Attention =====================================================================================================

namespace {

struct AttnCase {
  Index n_q = 4, n_k = 4, H = 2, G = 2, d = 4;
  double scale = 0.5;
  bo::AttnMask mask;
  unsigned seed = 41;
};

struct AttnResult {
  MatD q, k, v, out;
  bo::AttnGrad grad;
};

// FD checks of dq, dk, dv for random q, k, v of the case's shape; returns the inputs, output and gradients.
AttnResult check_attention(const AttnCase& c) {
  std::mt19937 rng(c.seed);
  AttnResult r;
  r.q = random_matrix(c.n_q, c.H * c.d, rng, 1.5);
  r.k = random_matrix(c.n_k, c.G * c.d, rng, 1.5);
  r.v = random_matrix(c.n_k, c.G * c.d, rng);
  const MatD weights = random_matrix(c.n_q, c.H * c.d, rng);
  r.out = bo::attention(r.q, r.k, r.v, c.H, c.G, c.scale, c.mask);
  r.grad = bo::attention_backward(r.q, r.k, r.v, c.H, c.G, c.scale, c.mask, weights);
  const auto loss = [&] { return weighted_sum(bo::attention(r.q, r.k, r.v, c.H, c.G, c.scale, c.mask), weights); };
  check_gradient("attention.dq", r.grad.dq, numeric_gradient(r.q, loss));
  check_gradient("attention.dk", r.grad.dk, numeric_gradient(r.k, loss));
  check_gradient("attention.dv", r.grad.dv, numeric_gradient(r.v, loss));
  return r;
}

}  // namespace

TEST_CASE("backward oracle: attention forward by hand", "[oracle]") {
  // With q = 0 every visible key has the same score, so each output is the mean of the visible values.
  const Index n = 4, d = 2;
  std::mt19937 rng(40);
  const MatD q = MatD::Zero(n, d), k = random_matrix(n, d, rng), v = random_matrix(n, d, rng);
  bo::AttnMask mask;
  mask.causal = true;
  const MatD causal = bo::attention(q, k, v, 1, 1, 1.0, mask);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < d; ++c) CHECK(causal(i, c) == Approx(v.topRows(i + 1).col(c).mean()).epsilon(1e-14));
  // An additive log-weight: softmax(log w) = w / Σw.
  bo::AttnMask weighted;
  weighted.additive = MatD::Zero(n, n);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) weighted.additive(i, j) = std::log(double(j + 1));
  const MatD out = bo::attention(q, k, v, 1, 1, 1.0, weighted);
  for (Index c = 0; c < d; ++c) {
    double expected = 0.0;
    for (Index j = 0; j < n; ++j) expected += double(j + 1) / 10.0 * v(j, c);
    CHECK(out(2, c) == Approx(expected).epsilon(1e-13));
  }
  // The scores: one query, two keys, scale 0.5: p = softmax(0.5·[1·2, 1·(−2)]) = softmax([1, −1]).
  MatD q1(1, 1), k2(2, 1), v2(2, 1);
  q1 << 1;
  k2 << 2, -2;
  v2 << 3, 5;
  const double p0 = 1.0 / (1.0 + std::exp(-2.0));
  CHECK(bo::attention(q1, k2, v2, 1, 1, 0.5, {})(0, 0) == Approx(3.0 * p0 + 5.0 * (1.0 - p0)).epsilon(1e-14));
}

TEST_CASE("backward oracle: attention with masks, GQA and cross attention", "[oracle]") {
  AttnCase c;
  SECTION("no mask") { check_attention(c); }
  SECTION("cross attention, n_q 3, n_k 6, scale 0.8") {
    c.n_q = 3;
    c.n_k = 6;
    c.scale = 0.8;
    check_attention(c);
  }
  SECTION("causal") {
    c.n_q = c.n_k = 5;
    c.mask.causal = true;
    const AttnResult r = check_attention(c);
    CHECK(r.out.row(0).isApprox(r.v.row(0), 1e-15));  // query 0 sees key 0 only
  }
  SECTION("causal with offset (3 queries after 3 cached keys)") {
    c.n_q = 3;
    c.n_k = 6;
    c.mask.causal = true;
    c.mask.causal_offset = 3;
    c.seed = 42;
    check_attention(c);
  }
  SECTION("additive mask with some -inf entries") {
    c.n_q = 4;
    c.n_k = 5;
    std::mt19937 rng(43);
    c.mask.additive = random_matrix(4, 5, rng, 2.0);
    c.mask.additive(0, 1) = c.mask.additive(0, 4) = -kInf;
    c.mask.additive(2, 0) = c.mask.additive(2, 2) = c.mask.additive(2, 3) = -kInf;
    c.mask.additive(3, 3) = -kInf;
    const AttnResult r = check_attention(c);
    // Query 2 sees keys 1 and 4 only.
    MatD q2 = r.q.row(2), k14(2, r.k.cols()), v14(2, r.v.cols());
    k14 << r.k.row(1), r.k.row(4);
    v14 << r.v.row(1), r.v.row(4);
    bo::AttnMask two;
    two.additive = MatD(1, 2);
    two.additive << c.mask.additive(2, 1), c.mask.additive(2, 4);
    CHECK(bo::attention(q2, k14, v14, c.H, c.G, c.scale, two).isApprox(r.out.row(2), 1e-14));
  }
  SECTION("key padding") {
    c.n_k = 5;
    c.mask.key_padding = {false, true, false, false, true};
    const AttnResult r = check_attention(c);
    CHECK(row_is_zero(r.grad.dk, 1));
    CHECK(row_is_zero(r.grad.dv, 1));
    CHECK(row_is_zero(r.grad.dk, 4));
    CHECK(row_is_zero(r.grad.dv, 4));
  }
  SECTION("n_valid_keys") {
    c.n_k = 5;
    c.mask.n_valid_keys = 3;
    const AttnResult r = check_attention(c);
    CHECK(row_is_zero(r.grad.dk, 3));
    CHECK(row_is_zero(r.grad.dv, 4));
  }
  SECTION("GQA: 4 query heads over 2 kv heads, causal") {
    c.n_q = c.n_k = 5;
    c.H = 4;
    c.G = 2;
    c.mask.causal = true;
    const AttnResult r = check_attention(c);
    // GQA is MHA over kv heads repeated per group (query heads 0, 1 read kv head 0; 2, 3 read kv head 1), and the
    // gradient of a shared kv head is the sum over its group's copies.
    MatD k_rep(c.n_k, 4 * c.d), v_rep(c.n_k, 4 * c.d);
    for (Index h = 0; h < 4; ++h) {
      k_rep.middleCols(h * c.d, c.d) = r.k.middleCols((h / 2) * c.d, c.d);
      v_rep.middleCols(h * c.d, c.d) = r.v.middleCols((h / 2) * c.d, c.d);
    }
    CHECK(bo::attention(r.q, k_rep, v_rep, 4, 4, c.scale, c.mask).isApprox(r.out, 1e-14));
    std::mt19937 rng(46);
    const MatD dout = random_matrix(c.n_q, 4 * c.d, rng);
    const bo::AttnGrad gqa = bo::attention_backward(r.q, r.k, r.v, 4, 2, c.scale, c.mask, dout);
    const bo::AttnGrad rep = bo::attention_backward(r.q, k_rep, v_rep, 4, 4, c.scale, c.mask, dout);
    CHECK(gqa.dq.isApprox(rep.dq, 1e-14));
    for (Index g = 0; g < 2; ++g) {
      const MatD dk_sum = rep.dk.middleCols(2 * g * c.d, c.d) + rep.dk.middleCols((2 * g + 1) * c.d, c.d);
      const MatD dv_sum = rep.dv.middleCols(2 * g * c.d, c.d) + rep.dv.middleCols((2 * g + 1) * c.d, c.d);
      CHECK(gqa.dk.middleCols(g * c.d, c.d).isApprox(dk_sum, 1e-14));
      CHECK(gqa.dv.middleCols(g * c.d, c.d).isApprox(dv_sum, 1e-14));
    }
  }
  SECTION("GQA with 1 kv head (multi-query), cross attention") {
    c.n_q = 3;
    c.n_k = 5;
    c.H = 4;
    c.G = 1;
    check_attention(c);
  }
  SECTION("all masks at once, GQA, cross attention") {
    c.n_q = 3;
    c.n_k = 7;
    c.H = 4;
    c.G = 2;
    c.d = 2;
    c.mask.causal = true;
    c.mask.causal_offset = 3;
    c.mask.key_padding = {false, false, true, false, false, false, false};
    c.mask.n_valid_keys = 6;
    std::mt19937 rng(44);
    c.mask.additive = random_matrix(3, 7, rng);
    c.mask.additive(1, 0) = -kInf;
    c.seed = 45;
    const AttnResult r = check_attention(c);
    CHECK(row_is_zero(r.grad.dk, 2));
    CHECK(row_is_zero(r.grad.dv, 6));
  }
}

TEST_CASE("backward oracle: attention query that sees no key", "[oracle]") {
  AttnCase c;
  c.n_q = 4;
  c.n_k = 5;
  SECTION("negative causal offset hides every key from query 0, an all -inf row hides them from query 2") {
    c.mask.causal = true;
    c.mask.causal_offset = -1;  // query i sees keys j ≤ i − 1
    c.mask.additive = MatD::Zero(4, 5);
    for (Index j = 0; j < 5; ++j) c.mask.additive(2, j) = -kInf;
    const AttnResult r = check_attention(c);
    for (const Index i : {Index(0), Index(2)}) {
      CHECK(row_is_zero(r.out, i));
      CHECK(row_is_zero(r.grad.dq, i));
    }
    CHECK_FALSE(row_is_zero(r.out, 1));
    CHECK(row_is_zero(r.grad.dk, 4));  // key 4 is visible to nobody (it would need i ≥ 5)
  }
  SECTION("every key padded: all outputs and gradients are zero") {
    c.mask.key_padding.assign(5, true);
    const AttnResult r = check_attention(c);
    CHECK(r.out.isZero(0.0));
    CHECK(r.grad.dq.isZero(0.0));
    CHECK(r.grad.dk.isZero(0.0));
    CHECK(r.grad.dv.isZero(0.0));
  }
  SECTION("n_valid_keys = 0") {
    c.mask.n_valid_keys = 0;
    const AttnResult r = check_attention(c);
    CHECK(r.out.isZero(0.0));
    CHECK(r.grad.dq.isZero(0.0));
  }
}

// ==== Multi-head attention module ===================================================================================

namespace {

struct MHACase {
  Index batch = 2, n_q = 4, n_k = 4, d_model = 8, d_kv = 8, H = 2, G = 2, head_dim = 4;
  bool biases = true, self_attention = true;
  bo::AttnMask mask;
  MatD key_padding;  // (batch, n_k) or empty
  unsigned seed = 51;
};

bo::MHAWeights random_mha(Index d_model, Index d_kv, Index H, Index G, Index head_dim, bool biases,
                          std::mt19937& rng) {
  bo::MHAWeights w;
  w.H = H;
  w.G = G;
  w.head_dim = head_dim;
  w.wq = random_matrix(H * head_dim, d_model, rng, 0.7);
  w.wk = random_matrix(G * head_dim, d_kv, rng, 0.7);
  w.wv = random_matrix(G * head_dim, d_kv, rng, 0.7);
  w.wo = random_matrix(d_model, H * head_dim, rng, 0.7);
  if (biases) {
    w.bq = random_vector(H * head_dim, rng, 0.3);
    w.bk = random_vector(G * head_dim, rng, 0.3);
    w.bv = random_vector(G * head_dim, rng, 0.3);
    w.bo = random_vector(d_model, rng, 0.3);
  }
  return w;
}

struct MHAResult {
  MatD x, kv, y;
  bo::MHAWeights w;
  bo::MHAGrad grad;
};

// FD checks of every gradient of mha_backward; for self-attention x is passed as both x and kv and its gradient is
// dx + dkv.
MHAResult check_mha(const MHACase& c) {
  std::mt19937 rng(c.seed);
  MHAResult r;
  r.x = random_matrix(c.batch * c.n_q, c.d_model, rng);
  if (!c.self_attention) r.kv = random_matrix(c.batch * c.n_k, c.d_kv, rng);
  r.w = random_mha(c.d_model, c.d_kv, c.H, c.G, c.head_dim, c.biases, rng);
  const MatD weights = random_matrix(c.batch * c.n_q, c.d_model, rng);
  const MatD& kv = c.self_attention ? r.x : r.kv;
  r.y = bo::mha(r.x, kv, c.batch, r.w, c.mask, c.key_padding);
  r.grad = bo::mha_backward(r.x, kv, c.batch, r.w, c.mask, c.key_padding, weights);
  const auto loss = [&] {
    return weighted_sum(bo::mha(r.x, c.self_attention ? r.x : r.kv, c.batch, r.w, c.mask, c.key_padding), weights);
  };
  if (c.self_attention) {
    check_gradient("mha.dx + dkv (self)", MatD(r.grad.dx + r.grad.dkv), numeric_gradient(r.x, loss));
  } else {
    check_gradient("mha.dx", r.grad.dx, numeric_gradient(r.x, loss));
    check_gradient("mha.dkv", r.grad.dkv, numeric_gradient(r.kv, loss));
  }
  check_gradient("mha.dwq", r.grad.dwq, numeric_gradient(r.w.wq, loss));
  check_gradient("mha.dwk", r.grad.dwk, numeric_gradient(r.w.wk, loss));
  check_gradient("mha.dwv", r.grad.dwv, numeric_gradient(r.w.wv, loss));
  check_gradient("mha.dwo", r.grad.dwo, numeric_gradient(r.w.wo, loss));
  if (c.biases) {
    check_gradient("mha.dbq", r.grad.dbq, numeric_gradient(r.w.bq, loss));
    // The key bias adds <q_i, bk> to every score of row i, which the softmax ignores: its gradient is exactly 0.
    check_zero_gradient("mha.dbk", r.grad.dbk, numeric_gradient(r.w.bk, loss));
    check_gradient("mha.dbv", r.grad.dbv, numeric_gradient(r.w.bv, loss));
    check_gradient("mha.dbo", r.grad.dbo, numeric_gradient(r.w.bo, loss));
  } else {
    CHECK(r.grad.dbq.size() + r.grad.dbk.size() + r.grad.dbv.size() + r.grad.dbo.size() == 0);
  }
  return r;
}

// Rows [b·n, (b+1)·n) of m.
MatD sequence(const MatD& m, Index b, Index n) { return m.middleRows(b * n, n); }

}  // namespace

TEST_CASE("backward oracle: multi-head attention module", "[oracle]") {
  MHACase c;
  SECTION("self-attention, batch 2, different key padding per sequence") {
    c.key_padding = MatD::Zero(2, 4);
    c.key_padding(0, 3) = 1.0;
    c.key_padding(1, 1) = 1.0;
    c.key_padding(1, 2) = 1.0;
    const MHAResult r = check_mha(c);
    // Each sequence alone (batch 1, its own padding row) gives the same rows: the batch does not mix sequences.
    for (Index b = 0; b < 2; ++b) {
      const MatD x_b = sequence(r.x, b, 4);
      const MatD y_b = bo::mha(x_b, x_b, 1, r.w, c.mask, MatD(c.key_padding.row(b)));
      CHECK(y_b.isApprox(sequence(r.y, b, 4), 1e-14));
    }
  }
  SECTION("causal self-attention, GQA (4 heads over 2), no biases") {
    c.H = 4;
    c.G = 2;
    c.head_dim = 2;
    c.biases = false;
    c.mask.causal = true;
    c.key_padding = MatD::Zero(2, 4);
    c.key_padding(1, 0) = 1.0;  // query 0 of sequence 1 sees no key
    const MHAResult r = check_mha(c);
    CHECK(row_is_zero(r.y, 4));  // no key, no bias: zero context, zero output
  }
  SECTION("a sequence whose keys are all padded outputs bo") {
    c.key_padding = MatD::Zero(2, 4);
    c.key_padding.row(0).setOnes();
    const MHAResult r = check_mha(c);
    for (Index i = 0; i < 4; ++i) CHECK(MatD(r.y.row(i).transpose()).isApprox(MatD(r.w.bo), 1e-15));
  }
  SECTION("cross attention: n_q 3, n_k 5, d_kv 6, additive mask and n_valid_keys, head_dim from wq") {
    c.self_attention = false;
    c.n_q = 3;
    c.n_k = 5;
    c.d_kv = 6;
    c.mask.n_valid_keys = 4;
    std::mt19937 rng(52);
    c.mask.additive = random_matrix(3, 5, rng);
    c.mask.additive(0, 0) = -kInf;
    c.key_padding = MatD::Zero(2, 5);
    c.key_padding(1, 2) = 1.0;
    c.seed = 53;
    check_mha(c);
  }
  SECTION("cross attention with GQA, causal offset, batch 1, no biases") {
    c.self_attention = false;
    c.batch = 1;
    c.n_q = 2;
    c.n_k = 5;
    c.d_kv = 4;
    c.H = 4;
    c.G = 2;
    c.head_dim = 3;
    c.biases = false;
    c.mask.causal = true;
    c.mask.causal_offset = 3;
    check_mha(c);
  }
}

// ==== Encoder layer =================================================================================================

namespace {

struct EncoderCase {
  Index batch = 2, seq = 4, d_model = 8, H = 2, f = 16;
  bool pre_norm = false;
  bo::Act act = bo::Act::relu;
  bo::AttnMask mask;
  MatD key_padding;
  unsigned seed = 61;
};

// FD checks of dx and every parameter gradient of encoder_layer_backward.
void check_encoder(const EncoderCase& c) {
  std::mt19937 rng(c.seed);
  MatD x = random_matrix(c.batch * c.seq, c.d_model, rng);
  bo::EncoderWeights w;
  w.pre_norm = c.pre_norm;
  w.attn = random_mha(c.d_model, c.d_model, c.H, c.H, c.d_model / c.H, true, rng);
  w.ffn = random_ffn(c.d_model, c.f, c.act, false, true, rng);
  w.norm1_gamma = random_gain(c.d_model, rng);
  w.norm1_beta = random_vector(c.d_model, rng, 0.2);
  w.norm2_gamma = random_gain(c.d_model, rng);
  w.norm2_beta = random_vector(c.d_model, rng, 0.2);
  const MatD weights = random_matrix(c.batch * c.seq, c.d_model, rng);
  if (c.act == bo::Act::relu) {
    // Keep away from ReLU's kink: the FFN's pre-activations of this seed are all ≥ 1e-3 from 0.
    MatD ffn_in;
    if (c.pre_norm) {
      const MatD n1 = bo::layer_norm(x, w.norm1_gamma, w.norm1_beta, w.eps);
      const MatD h = x + bo::mha(n1, n1, c.batch, w.attn, c.mask, c.key_padding);
      ffn_in = bo::layer_norm(h, w.norm2_gamma, w.norm2_beta, w.eps);
    } else {
      ffn_in = bo::layer_norm(x + bo::mha(x, x, c.batch, w.attn, c.mask, c.key_padding), w.norm1_gamma, w.norm1_beta,
                              w.eps);
    }
    REQUIRE(min_abs(bo::linear(ffn_in, w.ffn.w_up, w.ffn.b_up)) > 1e-3);
  }
  const bo::EncoderGrad g = bo::encoder_layer_backward(x, c.batch, w, c.mask, c.key_padding, weights);
  const auto loss = [&] { return weighted_sum(bo::encoder_layer(x, c.batch, w, c.mask, c.key_padding), weights); };
  check_gradient("encoder.dx", g.dx, numeric_gradient(x, loss));
  check_gradient("encoder.attn.dwq", g.attn.dwq, numeric_gradient(w.attn.wq, loss));
  check_gradient("encoder.attn.dwk", g.attn.dwk, numeric_gradient(w.attn.wk, loss));
  check_gradient("encoder.attn.dwv", g.attn.dwv, numeric_gradient(w.attn.wv, loss));
  check_gradient("encoder.attn.dwo", g.attn.dwo, numeric_gradient(w.attn.wo, loss));
  check_gradient("encoder.attn.dbq", g.attn.dbq, numeric_gradient(w.attn.bq, loss));
  check_zero_gradient("encoder.attn.dbk", g.attn.dbk, numeric_gradient(w.attn.bk, loss));  // softmax shift: 0
  check_gradient("encoder.attn.dbv", g.attn.dbv, numeric_gradient(w.attn.bv, loss));
  check_gradient("encoder.attn.dbo", g.attn.dbo, numeric_gradient(w.attn.bo, loss));
  check_gradient("encoder.ffn.dw_up", g.ffn.dw_up, numeric_gradient(w.ffn.w_up, loss));
  check_gradient("encoder.ffn.db_up", g.ffn.db_up, numeric_gradient(w.ffn.b_up, loss));
  check_gradient("encoder.ffn.dw_down", g.ffn.dw_down, numeric_gradient(w.ffn.w_down, loss));
  check_gradient("encoder.ffn.db_down", g.ffn.db_down, numeric_gradient(w.ffn.b_down, loss));
  check_gradient("encoder.norm1.dgamma", g.norm1.dgamma, numeric_gradient(w.norm1_gamma, loss));
  check_gradient("encoder.norm1.dbeta", g.norm1.dbeta, numeric_gradient(w.norm1_beta, loss));
  check_gradient("encoder.norm2.dgamma", g.norm2.dgamma, numeric_gradient(w.norm2_gamma, loss));
  check_gradient("encoder.norm2.dbeta", g.norm2.dbeta, numeric_gradient(w.norm2_beta, loss));
}

}  // namespace

TEST_CASE("backward oracle: encoder layer, post-norm and pre-norm", "[oracle]") {
  EncoderCase c;
  c.key_padding = MatD::Zero(2, 4);
  c.key_padding(0, 2) = 1.0;
  c.key_padding(1, 3) = 1.0;
  SECTION("post-norm, ReLU, key padding") { check_encoder(c); }
  SECTION("post-norm, GELU (tanh), causal") {
    c.act = bo::Act::gelu_tanh;
    c.mask.causal = true;
    c.key_padding.resize(0, 0);
    c.seed = 62;
    check_encoder(c);
  }
  SECTION("pre-norm, GELU (erf), key padding") {
    c.pre_norm = true;
    c.act = bo::Act::gelu_erf;
    c.seed = 63;
    check_encoder(c);
  }
  SECTION("pre-norm, ReLU, causal and key padding, batch 1 of 5 tokens") {
    c.pre_norm = true;
    c.batch = 1;
    c.seq = 5;
    c.mask.causal = true;
    c.key_padding = MatD::Zero(1, 5);
    c.key_padding(0, 1) = 1.0;
    c.seed = 64;
    check_encoder(c);
  }
}

// ==== Rotary positions ==============================================================================================

TEST_CASE("backward oracle: rotary positions", "[oracle]") {
  SECTION("forward by hand") {
    MatD x(1, 2);
    x << 1, 0;
    const MatD y = bo::rope(x, 1, 2, 1, true);  // position 1, pair 0: angle 1
    CHECK(y(0, 0) == Approx(std::cos(1.0)).epsilon(1e-15));
    CHECK(y(0, 1) == Approx(std::sin(1.0)).epsilon(1e-15));
    MatD e(2, 4);  // half layout, d = 4: pairs (0, 2) at angle pos, (1, 3) at angle pos·10000^(−1/2) = pos / 100
    e << 1, 0, 0, 0, 0, 1, 0, 0;
    const MatD z = bo::rope(e, 1, 4, 2, false);  // rows at positions 2 and 3
    CHECK(z(0, 0) == Approx(std::cos(2.0)).epsilon(1e-15));
    CHECK(z(0, 2) == Approx(std::sin(2.0)).epsilon(1e-15));
    CHECK(z(1, 1) == Approx(std::cos(0.03)).epsilon(1e-15));
    CHECK(z(1, 3) == Approx(std::sin(0.03)).epsilon(1e-15));
    CHECK(z(1, 0) == 0.0);
    CHECK(z(1, 2) == 0.0);
    std::mt19937 rng(70);
    const MatD r = random_matrix(3, 8, rng);
    CHECK(bo::rope(r, 2, 4, 0, true).row(0) == r.row(0));  // position 0 is the identity
    // The half layout is the interleaved one with each head's columns permuted (2i -> i, 2i+1 -> i + d/2).
    MatD r_interleaved(3, 8);
    for (Index row = 0; row < 3; ++row)
      for (Index head = 0; head < 2; ++head)
        for (Index i = 0; i < 2; ++i) {
          r_interleaved(row, head * 4 + 2 * i) = r(row, head * 4 + i);
          r_interleaved(row, head * 4 + 2 * i + 1) = r(row, head * 4 + i + 2);
        }
    const MatD half = bo::rope(r, 2, 4, 5, false), interleaved = bo::rope(r_interleaved, 2, 4, 5, true);
    for (Index row = 0; row < 3; ++row)
      for (Index head = 0; head < 2; ++head)
        for (Index i = 0; i < 2; ++i) {
          CHECK(half(row, head * 4 + i) == Approx(interleaved(row, head * 4 + 2 * i)).epsilon(1e-14));
          CHECK(half(row, head * 4 + i + 2) == Approx(interleaved(row, head * 4 + 2 * i + 1)).epsilon(1e-14));
        }
  }

  for (const bool interleaved : {true, false}) {
    for (const Index first : {Index(0), Index(5)}) {
      DYNAMIC_SECTION("finite differences, interleaved " << interleaved << ", first " << first) {
        std::mt19937 rng(71);
        MatD x = random_matrix(4, 2 * 6, rng);  // 2 heads of 6
        const MatD weights = random_matrix(4, 12, rng);
        const MatD dx = bo::rope_backward(weights, 2, 6, first, interleaved);
        const auto loss = [&] { return weighted_sum(bo::rope(x, 2, 6, first, interleaved), weights); };
        check_gradient("rope_backward", dx, numeric_gradient(x, loss));
        CHECK(bo::rope_backward(bo::rope(x, 2, 6, first, interleaved), 2, 6, first, interleaved).isApprox(x, 1e-14));
      }
    }
  }
  SECTION("finite differences, another base") {
    std::mt19937 rng(72);
    MatD x = random_matrix(3, 8, rng);
    const MatD weights = random_matrix(3, 8, rng);
    const MatD dx = bo::rope_backward(weights, 1, 8, 2, false, 500000.0);
    const auto loss = [&] { return weighted_sum(bo::rope(x, 1, 8, 2, false, 500000.0), weights); };
    check_gradient("rope_backward", dx, numeric_gradient(x, loss));
  }
}

// ==== Cross-entropy =================================================================================================

TEST_CASE("backward oracle: cross-entropy", "[oracle]") {
  SECTION("values by hand; ignored targets are not counted") {
    MatD logits(2, 2);
    logits << 0, 0, std::log(3.0), 0;
    CHECK(bo::cross_entropy(logits, {0, -1}) == Approx(std::log(2.0)).epsilon(1e-15));
    CHECK(bo::cross_entropy(logits, {-100, 0}) == Approx(std::log(4.0 / 3.0)).epsilon(1e-15));
    CHECK(bo::cross_entropy(logits, {0, 1}) == Approx(1.5 * std::log(2.0)).epsilon(1e-15));
    const MatD g = bo::cross_entropy_backward(logits, {0, -1});
    CHECK(g(0, 0) == Approx(-0.5).epsilon(1e-15));
    CHECK(g(0, 1) == Approx(0.5).epsilon(1e-15));
    CHECK(row_is_zero(g, 1));
    CHECK(bo::cross_entropy(logits, {-1, -1}) == 0.0);  // nothing counted: 0 here (torch gives NaN)
    CHECK(bo::cross_entropy_backward(logits, {-1, -1}).isZero(0.0));
    MatD big(1, 3);
    big << 1000, 0, -1000;  // no overflow
    CHECK(bo::cross_entropy(big, {1}) == Approx(1000.0).epsilon(1e-15));
  }
  SECTION("finite differences") {
    std::mt19937 rng(81);
    MatD logits = random_matrix(5, 7, rng, 3.0);
    const std::vector<Index> targets = {2, -1, 0, 6, -100};
    const MatD g = bo::cross_entropy_backward(logits, targets);
    const auto loss = [&] { return bo::cross_entropy(logits, targets); };
    check_gradient("cross_entropy_backward", g, numeric_gradient(logits, loss));
    CHECK(row_is_zero(g, 1));
    CHECK(row_is_zero(g, 4));
  }
}
