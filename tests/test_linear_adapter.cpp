// BottleneckAdapter<Inner> (Houlsby et al. 2019): without an adapter it is its inner layer bit for bit, a fresh
// adapter is the identity; forward and every gradient against a float64 evaluation of
// y = z + act(z·W_downᵀ + b_down)·W_upᵀ + b_up, z = x·Wᵀ + b, written here (its backward itself checked against
// central finite differences in double); names of parameters and gradients; errors; one const layer shared by
// threads; an EncoderLayer with adapters on its output and down projections (finite differences of the block's
// loss), and a tied-classifier Llama over BottleneckAdapter<Dense>.

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/linear/adapter.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/linear/int8.hpp"
#include "polyformer/models/llama.hpp"

using namespace bwt;
namespace oracle = backward_oracle;
using pf::Matrix;
using pf::Vector;
using Adapted = pf::BottleneckAdapter<pf::Dense>;

namespace {

/// One adapted layer's tensors in float, and the activation, for the float64 formula below.
struct Weights {
  Matrix w;  // (out, in)
  Vector b;  // (out) or empty
  Matrix down;
  Vector down_b;
  Matrix up;
  Vector up_b;
  oracle::Act act = oracle::Act::gelu_erf;
};

Weights random_weights(Index in, Index out, Index m, unsigned seed, bool bias = true) {
  return {pft::random_matrix(out, in, seed, 0.2f),
          bias ? random_vector(out, seed + 1, 0.1f) : Vector(),
          pft::random_matrix(m, out, seed + 2, 0.4f),
          random_vector(m, seed + 3, 0.2f),
          pft::random_matrix(out, m, seed + 4, 0.4f),
          random_vector(out, seed + 5, 0.1f)};
}

template <typename Layer = Adapted>
Layer make_layer(const Weights& w) {
  Layer l(w.w, w.b);
  l.set_adapter(w.down, w.down_b, w.up, w.up_b);
  return l;
}

/// The float64 tensors of the formula.
struct WeightsD {
  MatD w, down, up;
  VecD b, down_b, up_b;
  oracle::Act act;
};
WeightsD f64(const Weights& w) {
  return {bwt::f64(w.w), bwt::f64(w.down), bwt::f64(w.up), bwt::f64(w.b), bwt::f64(w.down_b), bwt::f64(w.up_b), w.act};
}

MatD act_of(oracle::Act act, const MatD& h) {
  MatD a = h;
  for (Index i = 0; i < a.size(); ++i) a.data()[i] = oracle::activation(act, h.data()[i]);
  return a;
}

/// y = z + act(z·W_downᵀ + b_down)·W_upᵀ + b_up with z = x·Wᵀ + b, in float64.
MatD forward_d(const MatD& x, const WeightsD& w) {
  const MatD z = oracle::linear(x, w.w, w.b);
  const MatD h = oracle::linear(z, w.down, w.down_b);
  return oracle::detail::sum(z, oracle::linear(act_of(w.act, h), w.up, w.up_b));
}

struct GradD {
  MatD dx, dw, d_down, d_up;
  VecD db, d_down_b, d_up_b;
};

/// Its backward from dy, by the chain rule through the three linear maps and the activation.
GradD backward_d(const MatD& x, const WeightsD& w, const MatD& dy) {
  const MatD z = oracle::linear(x, w.w, w.b);
  const MatD h = oracle::linear(z, w.down, w.down_b);
  const MatD a = act_of(w.act, h);
  const oracle::LinearGrad up = oracle::linear_backward(a, w.up, w.up_b, dy);
  MatD dh = up.dx;
  for (Index i = 0; i < dh.size(); ++i) dh.data()[i] *= oracle::activation_grad(w.act, h.data()[i]);
  const oracle::LinearGrad down = oracle::linear_backward(z, w.down, w.down_b, dh);
  const MatD dz = oracle::detail::sum(dy, down.dx);
  const oracle::LinearGrad inner = oracle::linear_backward(x, w.w, w.b, dz);
  return {inner.dx, inner.dw, down.dw, up.dw, inner.db, down.db, up.db};
}

/// Σ dy ⊙ y(x, w) in float64: the scalar whose gradient backward_d gives.
double loss_d(const MatD& x, const WeightsD& w, const MatD& dy) { return forward_d(x, w).cwiseProduct(dy).sum(); }

/// Central differences of loss_d in every entry of `t` (a tensor of w or x).
template <typename T>
T central_differences(T& t, const std::function<double()>& loss, double eps = 1e-5) {
  T g = t;
  for (Index i = 0; i < t.size(); ++i) {
    const double keep = t.data()[i];
    t.data()[i] = keep + eps;
    const double plus = loss();
    t.data()[i] = keep - eps;
    const double minus = loss();
    t.data()[i] = keep;
    g.data()[i] = (plus - minus) / (2.0 * eps);
  }
  return g;
}

template <typename Layer>
Matrix forward(const Layer& l, const Matrix& x, int threads = 1) {
  Matrix y(x.rows(), l.out_features());
  l.forward(pf::cview(x), pf::view(y), pf::Context{threads});
  return y;
}

}  // namespace

TEST_CASE("adapter: without an adapter it is the inner layer bit for bit, forward and backward", "[linear][adapter]") {
  const Index in = 40, out = 24;
  const Weights w = random_weights(in, out, 4, 1);
  const pf::Dense dense(w.w, w.b);
  Adapted plain(w.w, w.b);
  CHECK_FALSE(plain.has_adapter());
  CHECK(plain.bottleneck() == 0);
  CHECK(plain.in_features() == in);
  CHECK(plain.out_features() == out);
  CHECK(plain.has_bias());
  for (const Index n : {1, 7, 40}) {
    const Matrix x = pft::random_matrix(n, in, 2 + unsigned(n));
    CHECK(forward(plain, x, 2) == forward(dense, x, 2));
  }
  // Added and removed again: the inner layer alone.
  plain.add_adapter(6, 3);
  plain.remove_adapter();
  CHECK_FALSE(plain.has_adapter());
  const Matrix x = pft::random_matrix(13, in, 4), dy = pft::random_matrix(13, out, 5);
  CHECK(forward(plain, x) == forward(dense, x));

  // Backward: Dense's, with the inner gradients unfrozen; frozen (empty) by default.
  auto g = plain.make_gradients();
  CHECK(g.inner.weight.size() == 0);
  CHECK(g.down_w.size() == 0);
  g.inner = dense.make_gradients();
  auto gd = dense.make_gradients();
  Matrix dx(13, in), dx_dense(13, in);
  plain.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{1});
  dense.backward(pf::cview(x), pf::cview(dy), pf::view(dx_dense), gd, pf::Context{1});
  CHECK(dx == dx_dense);
  CHECK(g.inner.weight == gd.weight);
  CHECK(g.inner.bias == gd.bias);

  // A wrapper around a built layer, without a bias.
  const Adapted nobias{pf::Dense(w.w)};
  CHECK_FALSE(nobias.has_bias());
  CHECK(forward(nobias, x) == forward(pf::Dense(w.w), x));
}

TEST_CASE("adapter: a fresh adapter is the identity (W_up = 0), W_down small and seeded", "[linear][adapter]") {
  const Index in = 48, out = 40, m = 8;
  const Weights w = random_weights(in, out, m, 10);
  const pf::Dense dense(w.w, w.b);
  Adapted l(w.w, w.b);
  l.add_adapter(m, /*seed=*/7);
  REQUIRE(l.has_adapter());
  CHECK(l.bottleneck() == m);
  CHECK(l.down().rows() == m);
  CHECK(l.down().cols() == out);
  CHECK(l.up().rows() == out);
  CHECK(l.up().cols() == m);
  CHECK(l.up().isZero(0.0f));
  CHECK(l.down_bias().isZero(0.0f));
  CHECK(l.up_bias().isZero(0.0f));
  // Truncated normal, std 1e-3 before truncation at 2σ: bounded by 2e-3, spread ≈ 0.88e-3.
  CHECK(l.down().cwiseAbs().maxCoeff() <= 2e-3f);
  const double rms = std::sqrt(l.down().cast<double>().squaredNorm() / double(l.down().size()));
  CHECK(rms > 0.7e-3);
  CHECK(rms < 1.05e-3);
  for (const Index n : {1, 5, 33, 300}) {
    const Matrix x = pft::random_matrix(n, in, 11 + unsigned(n));
    CHECK(forward(l, x, 2) == forward(dense, x, 2));
  }
  // The seed decides W_down; the scale scales it.
  Adapted same(w.w, w.b), other(w.w, w.b), wider(w.w, w.b);
  same.add_adapter(m, 7);
  other.add_adapter(m, 8);
  wider.add_adapter(m, 7, 1e-2f);
  CHECK(same.down() == l.down());
  CHECK(other.down() != l.down());
  CHECK(pft::max_abs_diff(wider.down(), (10.0f * l.down()).eval()) < 1e-8);
  // Re-adding replaces the adapter.
  l.add_adapter(3, 1);
  CHECK(l.bottleneck() == 3);
}

TEST_CASE("adapter: forward equals the float64 formula for any rows, widths and threads", "[linear][adapter]") {
  struct Shape {
    Index in, out, m;
  };
  for (const Shape s : {Shape{40, 48, 1}, Shape{64, 17, 8}, Shape{96, 130, 16}, Shape{5, 64, 64}}) {
    const Weights w = random_weights(s.in, s.out, s.m, 20);
    const Adapted l = make_layer(w);
    for (const Index n : {1, 2, 7, 64, 200}) {  // n·m past stack_floats for the widest
      for (const int threads : {1, 2}) {
        INFO("in " << s.in << " out " << s.out << " m " << s.m << " n " << n << " threads " << threads);
        const Matrix x = pft::random_matrix(n, s.in, 21 + unsigned(n));
        CHECK(relative_error(forward(l, x, threads), forward_d(f64(x), f64(w))) < 2e-6);
      }
    }
  }
  REQUIRE(200 * 64 > Adapted::stack_floats);
  // Another activation: ReLU.
  Weights w = random_weights(32, 24, 6, 30);
  w.act = oracle::Act::relu;
  const auto l = make_layer<pf::BottleneckAdapter<pf::Dense, pf::ReLU>>(w);
  const Matrix x = pft::random_matrix(9, 32, 31);
  CHECK(relative_error(forward(l, x), forward_d(f64(x), f64(w))) < 2e-6);
}

TEST_CASE("adapter: the float64 backward of the test agrees with central differences", "[linear][adapter]") {
  const Index in = 7, out = 6, m = 3, n = 4;
  for (const oracle::Act act : {oracle::Act::gelu_erf, oracle::Act::relu}) {
    Weights wf = random_weights(in, out, m, 40);
    wf.act = act;
    WeightsD w = f64(wf);
    MatD x = bwt::f64(pft::random_matrix(n, in, 41)), dy = bwt::f64(pft::random_matrix(n, out, 42));
    const GradD g = backward_d(x, w, dy);
    const std::function<double()> loss = [&] { return loss_d(x, w, dy); };
    CHECK(relative_error(g.dx, central_differences(x, loss)) < 1e-7);
    CHECK(relative_error(g.dw, central_differences(w.w, loss)) < 1e-7);
    CHECK(relative_error(g.db, central_differences(w.b, loss)) < 1e-7);
    CHECK(relative_error(g.d_down, central_differences(w.down, loss)) < 1e-7);
    CHECK(relative_error(g.d_down_b, central_differences(w.down_b, loss)) < 1e-7);
    CHECK(relative_error(g.d_up, central_differences(w.up, loss)) < 1e-7);
    CHECK(relative_error(g.d_up_b, central_differences(w.up_b, loss)) < 1e-7);
  }
}

TEST_CASE("adapter: every gradient against the float64 oracle, dx written or accumulated", "[linear][adapter]") {
  struct Shape {
    Index in, out, m, n;
  };
  for (const Shape s : {Shape{24, 32, 4, 5}, Shape{64, 48, 16, 37}, Shape{33, 80, 40, 70}}) {
    for (const int threads : {1, 2}) {
      INFO("in " << s.in << " out " << s.out << " m " << s.m << " n " << s.n << " threads " << threads);
      const Weights w = random_weights(s.in, s.out, s.m, 50);
      const Adapted l = make_layer(w);
      const Matrix x = pft::random_matrix(s.n, s.in, 51), dy = pft::random_matrix(s.n, s.out, 52);
      const GradD want = backward_d(f64(x), f64(w), f64(dy));
      const pf::Context ctx{threads};

      // Default: the adapter trains, the inner layer is frozen. A forward on other rows before does not matter.
      auto g = l.make_gradients();
      CHECK(g.inner.weight.size() == 0);
      CHECK(g.inner.bias.size() == 0);
      forward(l, pft::random_matrix(3, s.in, 53));
      Matrix dx(s.n, s.in);
      l.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, ctx);
      BWT_CHECK_GRAD(dx, want.dx);
      BWT_CHECK_GRAD(g.down_w, want.d_down);
      BWT_CHECK_GRAD(g.down_b, want.d_down_b);
      BWT_CHECK_GRAD(g.up_w, want.d_up);
      BWT_CHECK_GRAD(g.up_b, want.d_up_b);
      CHECK(g.inner.weight.size() == 0);

      // The inner layer unfrozen by name; dx accumulated onto what it held; the buffers add up.
      pf::GradientList list;
      l.gradients(list, "layer.", g);
      CHECK(list.unfreeze("layer.weight") == 1);
      CHECK(list.unfreeze("layer.bias") == 1);
      list.zero();
      const Matrix before = pft::random_matrix(s.n, s.in, 54);
      Matrix acc = before;
      l.backward(pf::cview(x), pf::cview(dy), pf::view(acc), g, ctx, /*accumulate_dx=*/true);
      l.backward(pf::cview(x), pf::cview(dy), pf::view(acc), g, ctx, /*accumulate_dx=*/true);
      BWT_CHECK_GRAD(acc, MatD(bwt::f64(before) + 2.0 * want.dx));
      BWT_CHECK_GRAD(g.inner.weight, MatD(2.0 * want.dw));
      BWT_CHECK_GRAD(g.inner.bias, VecD(2.0 * want.db));
      BWT_CHECK_GRAD(g.down_w, MatD(2.0 * want.d_down));
      BWT_CHECK_GRAD(g.down_b, VecD(2.0 * want.d_down_b));
      BWT_CHECK_GRAD(g.up_w, MatD(2.0 * want.d_up));
      BWT_CHECK_GRAD(g.up_b, VecD(2.0 * want.d_up_b));

      // Frozen adapter tensors stay empty, the others still fill; a dx of no columns is skipped.
      CHECK(list.freeze("layer.adapter.down.") == 2);
      CHECK(list.freeze("layer.weight") == 1);
      list.zero();
      Matrix none(s.n, 0);
      l.backward(pf::cview(x), pf::cview(dy), pf::view(none), g, ctx);
      CHECK(g.down_w.size() == 0);
      CHECK(g.down_b.size() == 0);
      CHECK(g.inner.weight.size() == 0);
      BWT_CHECK_GRAD(g.up_w, want.d_up);
      BWT_CHECK_GRAD(g.inner.bias, want.db);
    }
  }
}

TEST_CASE("adapter: parameters and gradients by name, writes reach forward", "[linear][adapter]") {
  const Index in = 12, out = 10, m = 3;
  const Weights w = random_weights(in, out, m, 60);
  Adapted l(w.w, w.b);
  {
    pf::ParameterList list;
    l.parameters(list, "p.");
    REQUIRE(list.size() == 2);  // no adapter: the inner layer's alone
    CHECK(list.items()[0].name == "p.weight");
    CHECK(list.items()[1].name == "p.bias");
  }
  l.add_adapter(m, 1);
  pf::ParameterList list;
  l.parameters(list, "p.");
  const std::vector<std::string> names{"p.weight", "p.bias", "p.adapter.down.weight", "p.adapter.down.bias",
                                       "p.adapter.up.weight", "p.adapter.up.bias"};
  const std::vector<std::vector<Index>> shapes{{out, in}, {out}, {m, out}, {m}, {out, m}, {out}};
  REQUIRE(list.size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    CHECK(list.items()[i].name == names[i]);
    CHECK(list.items()[i].shape == shapes[i]);
  }
  // Written by name (as a checkpoint loader does): forward is the formula with the new values.
  const auto write = [&](const std::string& name, const auto& values) { list.find(name)->write(values.data()); };
  write("p.adapter.down.weight", w.down);
  write("p.adapter.down.bias", w.down_b);
  write("p.adapter.up.weight", w.up);
  write("p.adapter.up.bias", w.up_b);
  const Matrix x = pft::random_matrix(6, in, 61);
  CHECK(relative_error(forward(l, x), forward_d(f64(x), f64(w))) < 2e-6);
  // Read back as written.
  const auto read = [&](const std::string& name) {
    const pf::Parameter* p = list.find(name);
    Matrix v(1, p->numel());
    p->read(v.data());
    return v;
  };
  CHECK(read("p.adapter.down.weight").reshaped<Eigen::RowMajor>() == w.down.reshaped<Eigen::RowMajor>());
  CHECK(read("p.adapter.up.bias").reshaped<Eigen::RowMajor>() == w.up_b.reshaped<Eigen::RowMajor>());
  CHECK(read("p.weight").reshaped<Eigen::RowMajor>() == w.w.reshaped<Eigen::RowMajor>());
  CHECK(l.down() == w.down);
  // Another layer loaded from this one's list: the same outputs.
  Adapted copy(Matrix::Zero(out, in), Vector::Zero(out));
  copy.add_adapter(m, 99);
  pf::ParameterList target;
  copy.parameters(target, "p.");
  for (const pf::Parameter& p : list.items()) {
    std::vector<float> buffer(static_cast<std::size_t>(p.numel()));
    p.read(buffer.data());
    target.find(p.name)->write(buffer.data());
  }
  CHECK(forward(copy, x) == forward(l, x));

  // Gradients: the same names and shapes.
  auto g = l.make_gradients();
  pf::GradientList grads;
  l.gradients(grads, "p.", g);
  REQUIRE(grads.size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    CHECK(grads.items()[i].name == names[i]);
    CHECK(grads.items()[i].shape == shapes[i]);
    CHECK(grads.items()[i].trainable() == (i >= 2));  // the inner layer frozen
  }
  CHECK(grads.trainable_numel() == 2 * m * out + m + out);
}

TEST_CASE("adapter: bad shapes and settings are refused with clear messages", "[linear][adapter][errors]") {
  const Index in = 6, out = 8;
  Adapted l{pf::Dense(pft::random_matrix(out, in, 70))};
  CHECK_THROWS_WITH(l.set_adapter(Matrix::Zero(2, 5), Vector::Zero(2), Matrix::Zero(out, 2), Vector::Zero(out)),
                    Catch::Contains("BottleneckAdapter::set_adapter: down has shape (2, 5), expected (m >= 1, 8)"));
  CHECK_THROWS_WITH(l.set_adapter(Matrix::Zero(0, out), Vector(), Matrix::Zero(out, 0), Vector::Zero(out)),
                    Catch::Contains("down has shape (0, 8), expected (m >= 1, 8)"));
  CHECK_THROWS_WITH(l.set_adapter(Matrix::Zero(2, out), Vector::Zero(3), Matrix::Zero(out, 2), Vector::Zero(out)),
                    Catch::Contains("BottleneckAdapter::set_adapter: down_bias has shape (3), expected (2)"));
  CHECK_THROWS_WITH(l.set_adapter(Matrix::Zero(2, out), Vector::Zero(2), Matrix::Zero(out, 3), Vector::Zero(out)),
                    Catch::Contains("BottleneckAdapter::set_adapter: up has shape (8, 3), expected (8, 2)"));
  CHECK_THROWS_WITH(l.set_adapter(Matrix::Zero(2, out), Vector::Zero(2), Matrix::Zero(out, 2), Vector::Zero(7)),
                    Catch::Contains("BottleneckAdapter::set_adapter: up_bias has shape (7), expected (8)"));
  CHECK_FALSE(l.has_adapter());  // nothing was set by the refused calls
  CHECK_THROWS_WITH(l.add_adapter(0, 1), Catch::Contains("BottleneckAdapter::add_adapter: bottleneck is 0, expected >= 1"));
  CHECK_THROWS_AS(l.add_adapter(2, 1, -1.0f), pf::config_error);
  CHECK_THROWS_AS(l.add_adapter(2, 1, std::numeric_limits<float>::quiet_NaN()), pf::config_error);

  // Gradients made before the adapter was added have no adapter buffers: frozen, as any empty buffer.
  auto stale = l.make_gradients();
  l.add_adapter(2, 1);
  const Matrix x = pft::random_matrix(3, in, 71), dy = pft::random_matrix(3, out, 72);
  Matrix dx(3, in);
  l.backward(pf::cview(x), pf::cview(dy), pf::view(dx), stale, {});
  CHECK(stale.down_w.size() == 0);
  auto g = l.make_gradients();
  g.up_w.resize(out, 3);
  CHECK_THROWS_WITH(l.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, {}),
                    Catch::Contains("BottleneckAdapter::backward: the gradient of adapter.up.weight has shape (8, 3), "
                                    "expected (8, 2) or empty (frozen)"));
  g = l.make_gradients();
  Matrix bad(4, out);
  CHECK_THROWS_WITH(l.backward(pf::cview(x), pf::cview(bad), pf::view(dx), g, {}),
                    Catch::Contains("BottleneckAdapter::backward: dy has shape (4, 8), expected (3, 8)"));
  CHECK_THROWS_WITH(l.backward(pf::cview(bad), pf::cview(dy), pf::view(dx), g, {}),
                    Catch::Contains("BottleneckAdapter::backward: x has shape (4, 8), expected (n, 6)"));
  Matrix y(3, out);
  CHECK_THROWS_WITH(l.forward(pf::cview(bad), pf::view(y), {}), Catch::Contains("Dense::forward: x has shape (4, 8)"));
  l.remove_adapter();
  CHECK_THROWS_WITH(l.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, {}),
                    Catch::Contains("adapter gradients were given for a layer without an adapter"));
}

TEST_CASE("adapter: one const layer serves several threads at once", "[linear][adapter][threads]") {
  const Index in = 64, out = 40, m = 16;
  const Adapted layer = make_layer(random_weights(in, out, m, 80));
  // n·m of 16 per row: the intermediate on the stack for the small inputs, on the heap for 300 rows.
  const std::vector<Matrix> xs{pft::random_matrix(1, in, 81), pft::random_matrix(7, in, 82),
                               pft::random_matrix(300, in, 83)};
  REQUIRE(300 * m > Adapted::stack_floats);
  std::vector<Matrix> expected;
  for (const Matrix& x : xs) expected.push_back(forward(layer, x));
  std::vector<int> mismatches(xs.size(), 0);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < xs.size(); ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 30; ++rep) mismatches[i] += !(forward(layer, xs[i]).array() == expected[i].array()).all();
    });
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < xs.size(); ++i) CHECK(mismatches[i] == 0);
}

namespace {

/// An encoder layer (pre-norm, GELU) over linear policy `Lin`, its weights drawn as in test_backward_blocks.cpp.
template <typename Lin>
auto make_encoder(Index d, Index heads, Index hidden) {
  using Layer = pf::EncoderLayer<pf::FullAttention, Lin, pf::LayerNorm, pf::GELU, pf::NormPlacement::pre>;
  const auto lin = [](Index out, Index in, unsigned seed) {
    return Lin(pft::random_matrix(out, in, seed, 0.3f), random_vector(out, seed + 100, 0.1f));
  };
  const auto norm = [&](unsigned seed) {
    return pf::LayerNorm(Vector::Ones(d) + random_vector(d, seed, 0.1f), random_vector(d, seed + 1, 0.1f));
  };
  return Layer(typename Layer::Attention(lin(d, d, 1), lin(d, d, 2), lin(d, d, 3), lin(d, d, 4), pf::HeadConfig{heads},
                                         pf::FullAttention(pf::FullAttention::Tiles{8, 16})),
               typename Layer::FFN(lin(hidden, d, 5), lin(d, hidden, 6)), norm(7), norm(9));
}

}  // namespace

TEST_CASE("adapter: an EncoderLayer with adapters on its output and down projections trains them",
          "[linear][adapter][blocks]") {
  const Index d = 32, heads = 4, hidden = 48, m = 6, batch = 2, n = 11;
  auto plain = make_encoder<pf::Dense>(d, heads, hidden);
  auto layer = make_encoder<Adapted>(d, heads, hidden);
  const Matrix x = pft::random_matrix(batch * n, d, 21), dy = pft::random_matrix(batch * n, d, 22);
  const pf::MaskSpec mask = pf::MaskSpec::causal_mask();
  const auto run = [&](const auto& block, int threads) {
    Matrix y(batch * n, d);
    typename std::decay_t<decltype(block)>::Saved saved;
    block.forward_train(pf::cview(x), batch, mask, pf::view(y), saved, pf::Context{threads});
    return y;
  };
  // No adapters: the Dense block bit for bit; fresh adapters: still.
  const Matrix y_plain = run(plain, 1);
  CHECK(run(layer, 1) == y_plain);
  layer.self_attn().o_proj().add_adapter(m, 1);
  layer.ffn().down().add_adapter(m, 2);
  CHECK(run(layer, 1) == y_plain);

  // Trained adapters change the output, and only through those two layers: the parameters add theirs alone.
  const Weights wo = random_weights(d, d, m, 30), w2 = random_weights(hidden, d, m, 40);
  layer.self_attn().o_proj().set_adapter(wo.down, wo.down_b, wo.up, wo.up_b);
  layer.ffn().down().set_adapter(w2.down, w2.down_b, w2.up, w2.up_b);
  const Matrix y = run(layer, 1);
  CHECK(pft::max_abs_diff(y, y_plain) > 1e-2);
  CHECK(run(layer, 2) == y);
  pf::ParameterList params = pf::parameters_of(layer);
  CHECK(params.size() == pf::parameters_of(plain).size() + 8);
  const std::vector<std::string> adapter_names{
      "self_attn.out_proj.adapter.down.weight", "self_attn.out_proj.adapter.down.bias",
      "self_attn.out_proj.adapter.up.weight",   "self_attn.out_proj.adapter.up.bias",
      "linear2.adapter.down.weight",            "linear2.adapter.down.bias",
      "linear2.adapter.up.weight",              "linear2.adapter.up.bias"};
  for (const auto& name : adapter_names) CHECK(params.find(name) != nullptr);

  // Backward: finite gradients; the linear layers' own frozen (Houlsby trains the adapters and the norms).
  using Layer = decltype(layer);
  auto g = layer.make_gradients();
  const pf::GradientList grads = pf::gradients_of(layer, g);
  REQUIRE(grads.size() == params.size());
  for (std::size_t i = 0; i < params.size(); ++i) CHECK(grads.items()[i].name == params.items()[i].name);
  CHECK(g.self_attn.q.inner.weight.size() == 0);
  CHECK(g.ffn.down.inner.weight.size() == 0);
  CHECK(grads.trainable_numel() == 2 * (2 * m * d + m + d) + 4 * d);  // two adapters, two norms
  Matrix dx(batch * n, d), y_train(batch * n, d);
  for (const int threads : {1, 2}) {
    INFO("threads " << threads);
    grads.zero();
    typename Layer::Saved saved;
    layer.forward_train(pf::cview(x), batch, mask, pf::view(y_train), saved, pf::Context{threads});
    layer.backward(pf::cview(dy), pf::view(dx), g, saved, pf::Context{threads});
    CHECK(dx.allFinite());
    for (const pf::Gradient& gr : grads.items()) {
      if (!gr.trainable()) continue;
      std::vector<float> v(static_cast<std::size_t>(gr.numel()));
      gr.read(v.data());
      const Eigen::Map<const Eigen::VectorXf> values(v.data(), gr.numel());
      INFO(gr.name);
      CHECK(values.allFinite());
      CHECK(values.norm() > 0.0f);
    }
  }

  // Finite differences of the block's loss Σ dy ⊙ y (summed in double) along a random direction of each adapter
  // tensor, and entry by entry for a few entries of one.
  const auto loss = [&] {
    return run(layer, 1).cast<double>().cwiseProduct(dy.cast<double>()).sum();
  };
  const auto read = [](const pf::Parameter& p) {
    std::vector<float> v(static_cast<std::size_t>(p.numel()));
    p.read(v.data());
    return v;
  };
  for (const auto& name : adapter_names) {
    INFO(name);
    const pf::Parameter& p = *params.find(name);
    std::vector<float> grad(static_cast<std::size_t>(p.numel()));
    grads.at(name).read(grad.data());
    const std::vector<float> base = read(p);
    const Matrix direction = pft::random_matrix(1, p.numel(), 90).normalized();  // a unit step
    const double eps = 1e-2;
    std::vector<float> moved = base;
    for (std::size_t i = 0; i < moved.size(); ++i) moved[i] = base[i] + float(eps * direction(0, Index(i)));
    p.write(moved.data());
    const double plus = loss();
    for (std::size_t i = 0; i < moved.size(); ++i) moved[i] = base[i] - float(eps * direction(0, Index(i)));
    p.write(moved.data());
    const double minus = loss();
    p.write(base.data());
    double want = 0.0;
    for (std::size_t i = 0; i < grad.size(); ++i) want += double(grad[i]) * direction(0, Index(i));
    const double got = (plus - minus) / (2.0 * eps);
    INFO("directional derivative: backward " << want << ", finite difference " << got);
    CHECK(std::abs(got - want) <= 2e-3 * std::max(1.0, std::abs(want)));
  }
  {
    const std::string name = "linear2.adapter.down.weight";
    const pf::Parameter& p = *params.find(name);
    std::vector<float> grad(static_cast<std::size_t>(p.numel()));
    grads.at(name).read(grad.data());
    const std::vector<float> base = read(p);
    for (const std::size_t i : {std::size_t(0), std::size_t(37), std::size_t(base.size() - 1)}) {
      const double eps = 1e-2;
      std::vector<float> moved = base;
      moved[i] = base[i] + float(eps);
      p.write(moved.data());
      const double plus = loss();
      moved[i] = base[i] - float(eps);
      p.write(moved.data());
      const double minus = loss();
      p.write(base.data());
      const double got = (plus - minus) / (2.0 * eps);
      INFO("entry " << i << ": backward " << grad[i] << ", finite difference " << got);
      CHECK(std::abs(got - grad[i]) <= 2e-3 * std::max(1.0, std::abs(got)));
    }
  }
  CHECK(run(layer, 1) == y);  // the weights restored
}

TEST_CASE("adapter: a Llama over BottleneckAdapter<Dense> keeps its tied classifier", "[linear][adapter][llama]") {
  static_assert(pf::exact_float_weights<Adapted> && !pf::exact_float_weights<pf::BottleneckAdapter<pf::Int8>>);
  pf::io::LlamaConfig c;
  c.dim = 32, c.hidden_dim = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 50, c.seq_len = 32;
  c.shared_classifier = true;
  auto plain = pf::make_llama<pf::Dense>(c);
  auto model = pf::make_llama<Adapted>(c);
  REQUIRE(model.classifier() == nullptr);  // the embedding itself, as the Dense model's
  pf::ParameterList from = pf::parameters_of(plain), to = pf::parameters_of(model);
  REQUIRE(from.size() == to.size());
  unsigned seed = 1;
  for (std::size_t i = 0; i < from.size(); ++i) {
    const pf::Parameter& p = from.items()[i];
    REQUIRE(to.items()[i].name == p.name);
    const bool gain = p.shape.size() == 1;
    Matrix v = pft::random_matrix(p.shape[0], gain ? 1 : p.shape[1], seed++, gain ? 0.1f : 0.2f);
    if (gain) v.array() += 1.0f;
    p.write(v.data());
    to.items()[i].write(v.data());
  }
  const std::vector<int> tokens{1, 7, 3, 49, 12, 0, 5, 8};
  const auto logits = [&](const auto& mdl) {
    Matrix out(Index(tokens.size()), c.vocab_size);
    typename std::decay_t<decltype(mdl)>::Saved saved;
    mdl.forward_train(tokens, 1, pf::view(out), saved, pf::Context{1});
    return out;
  };
  const Matrix base = logits(plain);
  CHECK(logits(model) == base);
  // Adapters on layer 0's output and down projections: the logits move, the embedding still gets the classifier's
  // gradient (tied), the adapters theirs.
  auto& layer = model.layers()[0];
  layer.self_attn().o_proj().add_adapter(4, 1);
  layer.ffn().down().add_adapter(4, 2);
  CHECK(logits(model) == base);  // fresh
  pf::ParameterList params = pf::parameters_of(model);
  for (const std::string name : {"layers.0.attention.wo.adapter.down.weight", "layers.0.attention.wo.adapter.up.weight",
                                 "layers.0.feed_forward.w2.adapter.down.weight",
                                 "layers.0.feed_forward.w2.adapter.up.weight"}) {
    const pf::Parameter* p = params.find(name);
    REQUIRE(p != nullptr);
    const Matrix v = pft::random_matrix(p->shape[0], p->shape[1], seed++, 0.3f);
    p->write(v.data());
  }
  Matrix out(Index(tokens.size()), c.vocab_size);
  typename decltype(model)::Saved saved;
  model.forward_train(tokens, 1, pf::view(out), saved, pf::Context{1});
  CHECK(pft::max_abs_diff(out, base) > 1e-3);
  auto g = model.make_gradients();
  const pf::GradientList grads = pf::gradients_of(model, g);
  const Matrix dlogits = pft::random_matrix(out.rows(), out.cols(), 99);
  model.backward(pf::cview(dlogits), g, saved, pf::Context{1});
  for (const std::string name : {"tok_embeddings.weight", "layers.0.attention.wo.adapter.down.weight",
                                 "layers.0.feed_forward.w2.adapter.up.bias"}) {
    INFO(name);
    const pf::Gradient& gr = grads.at(name);
    REQUIRE(gr.trainable());
    std::vector<float> v(static_cast<std::size_t>(gr.numel()));
    gr.read(v.data());
    const Eigen::Map<const Eigen::VectorXf> values(v.data(), gr.numel());
    CHECK(values.allFinite());
    CHECK(values.norm() > 0.0f);
  }
}
