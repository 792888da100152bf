// Backward passes of the layers against the float64 oracle (backward_oracle.hpp): Dense, LayerNorm, RMSNorm, the
// activations on every kernel path the CPU has, FeedForward plain and gated; gradient names, freezing, bad input.

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "backward_testing.hpp"
#include "kernels_testing.hpp"
#include "polyformer/kernels/activation_backward.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/ffn.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/linear/int8.hpp"
#include "polyformer/linear/lora.hpp"

using namespace bwt;
namespace oracle = backward_oracle;
using pf::Matrix;
using pf::Vector;

TEST_CASE("backward: Dense, with and without bias, 1 and 2 threads", "[backward]") {
  for (const bool bias : {true, false})
    for (const int threads : {1, 2})
      for (const auto& [n, in, out] : {std::tuple<Index, Index, Index>{5, 7, 3}, {67, 40, 33}, {130, 96, 80}}) {
        INFO("bias " << bias << ", threads " << threads << ", n " << n << ", in " << in << ", out " << out);
        const Matrix w = pft::random_matrix(out, in, 1, 0.3f), x = pft::random_matrix(n, in, 2);
        const Matrix dy = pft::random_matrix(n, out, 3);
        const Vector b = bias ? random_vector(out, 4) : Vector();
        pf::Dense layer(w, b);
        auto g = layer.make_gradients();
        Matrix dx(n, in);
        layer.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{threads});
        const auto want = oracle::linear_backward(f64(x), f64(w), f64(b), f64(dy));
        BWT_CHECK_GRAD(dx, want.dx);
        BWT_CHECK_GRAD(g.weight, want.dw);
        if (bias) BWT_CHECK_GRAD(g.bias, want.db);
        CHECK(g.bias.size() == (bias ? out : 0));
        // A second backward adds to the parameters' gradients and, asked to, to dx.
        layer.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{threads}, /*accumulate_dx=*/true);
        BWT_CHECK_GRAD(dx, MatD(2.0 * want.dx));
        BWT_CHECK_GRAD(g.weight, MatD(2.0 * want.dw));
      }
}

TEST_CASE("backward: Dense's dx follows its weight through set_weight, parameter writes and copies", "[backward]") {
  const Index n = 9, in = 20, out = 17;
  const Matrix x = pft::random_matrix(n, in, 1), dy = pft::random_matrix(n, out, 2);
  const Matrix w1 = pft::random_matrix(out, in, 3, 0.3f), w2 = pft::random_matrix(out, in, 4, 0.3f);
  const Matrix w3 = pft::random_matrix(out, in, 5, 0.3f);
  pf::Dense layer(w1);
  auto g = layer.make_gradients();
  Matrix dx(n, in);
  const auto check_dx = [&](const pf::Dense& l, const Matrix& w) {
    l.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{2});
    BWT_CHECK_GRAD(dx, oracle::linear_backward(f64(x), f64(w), VecD(), f64(dy)).dx);
  };
  check_dx(layer, w1);  // packs W for the backward
  const pf::Dense copy = layer;
  layer.set_weight(w2);
  check_dx(layer, w2);
  check_dx(copy, w1);
  pf::ParameterList params;
  layer.parameters(params, "");
  params.find("weight")->write(w3.data());
  check_dx(layer, w3);
  pf::Dense assigned(w2);
  check_dx(assigned, w2);
  assigned = layer;
  check_dx(assigned, w3);
}

TEST_CASE("backward: Dense gradients are named as its parameters, freeze by name, skip dx", "[backward]") {
  pf::Dense layer(pft::random_matrix(4, 3, 1), random_vector(4, 2));
  auto g = layer.make_gradients();
  pf::GradientList list;
  layer.gradients(list, "proj.", g);
  pf::ParameterList params;
  layer.parameters(params, "proj.");
  REQUIRE(list.size() == params.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    CHECK(list.items()[i].name == params.items()[i].name);
    CHECK(list.items()[i].shape == params.items()[i].shape);
  }
  CHECK(list.freeze("proj.weight") == 1);
  CHECK(g.weight.size() == 0);
  CHECK(list.trainable_numel() == 4);
  CHECK_THROWS_WITH(list.freeze("proj.wieght"), Catch::Contains("no tensor name starts with 'proj.wieght'"));
  const Matrix x = pft::random_matrix(6, 3, 3), dy = pft::random_matrix(6, 4, 4);
  Matrix no_dx(6, 0);
  layer.backward(pf::cview(x), pf::cview(dy), pf::view(no_dx), g, {});
  CHECK(g.weight.size() == 0);  // frozen: nothing computed
  BWT_CHECK_GRAD(g.bias, VecD(f64(dy).colwise().sum().transpose()));
  std::vector<float> read(12, 1.0f);
  list.at("proj.weight").read(read.data());
  CHECK(read == std::vector<float>(12, 0.0f));  // a frozen gradient reads as zeros
  list.unfreeze("proj.");
  CHECK(g.weight.rows() == 4);
  CHECK(g.weight.cols() == 3);
  CHECK(g.weight.norm() == 0.0f);
  list.zero();
  CHECK(g.bias.norm() == 0.0f);
}

TEST_CASE("backward: Dense bad input", "[backward][errors]") {
  pf::Dense layer(pft::random_matrix(4, 3, 1));
  auto g = layer.make_gradients();
  Matrix x = pft::random_matrix(5, 3, 2), dy = pft::random_matrix(5, 4, 3), dx(5, 3);
  Matrix bad_dy(5, 5), bad_dx(4, 3);
  CHECK_THROWS_WITH(layer.backward(pf::cview(x), pf::cview(bad_dy), pf::view(dx), g, {}),
                    Catch::Contains("Dense::backward: dy has shape (5, 5), expected (5, 4)"));
  CHECK_THROWS_WITH(layer.backward(pf::cview(x), pf::cview(dy), pf::view(bad_dx), g, {}),
                    Catch::Contains("Dense::backward: dx has shape (4, 3), expected (5, 3)"));
  g.weight.resize(3, 4);
  CHECK_THROWS_WITH(layer.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, {}),
                    Catch::Contains("the gradient of weight has shape (3, 4), expected (4, 3) or empty (frozen)"));
  g = layer.make_gradients();
  g.bias = Vector::Zero(4);
  CHECK_THROWS_WITH(layer.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, {}),
                    Catch::Contains("a bias gradient was given for a layer without a bias"));
}

TEST_CASE("backward: LayerNorm and RMSNorm", "[backward]") {
  for (const Index d : {1, 5, 64, 77}) {
    INFO("d " << d);
    const Matrix x = pft::random_matrix(9, d, 1, 2.0f), dy = pft::random_matrix(9, d, 2);
    const Vector gamma = random_vector(d, 3, 0.5f), beta = random_vector(d, 4);
    {
      pf::LayerNorm norm(gamma, beta, 1e-5f);
      auto g = norm.make_gradients();
      Matrix dx(9, d);
      norm.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g);
      const auto want = oracle::layer_norm_backward(f64(x), f64(gamma), f64(beta), 1e-5, f64(dy));
      // d = 1: every row normalizes to beta, so dx is 0 (compared with a floor of 1).
      BWT_CHECK_GRAD(dx, want.dx, d == 1 ? 1.0 : 1e-30);
      BWT_CHECK_GRAD(g.weight, want.dgamma, d == 1 ? 1.0 : 1e-30);
      BWT_CHECK_GRAD(g.bias, want.dbeta);
    }
    if (d > 1) {  // d = 1: y = ±gamma·|x|/sqrt(x² + eps), whose tiny dx is all float cancellation
      pf::RMSNorm norm(gamma, 1e-5f);
      auto g = norm.make_gradients();
      Matrix dx = dy;  // in place: dx may alias dy
      norm.backward(pf::cview(x), pf::cview(dx), pf::view(dx), g);
      const auto want = oracle::rms_norm_backward(f64(x), f64(gamma), 1e-5, f64(dy));
      BWT_CHECK_GRAD(dx, want.dx);
      BWT_CHECK_GRAD(g.weight, want.dgamma);
    }
  }
  pf::LayerNorm norm(4);
  auto g = norm.make_gradients();
  g.bias.resize(0);  // frozen
  Matrix x = pft::random_matrix(3, 4, 1), dx(3, 4);
  norm.backward(pf::cview(x), pf::cview(x), pf::view(dx), g);
  CHECK(g.bias.size() == 0);
  Matrix bad(3, 5);
  CHECK_THROWS_WITH(norm.backward(pf::cview(x), pf::cview(bad), pf::view(dx), g),
                    Catch::Contains("LayerNorm::backward: dy has shape (3, 5), expected (3, 4)"));
}

namespace {
// x in [−6, 6], away from ReLU's kink, with both tails of every approximation.
std::vector<float> activation_inputs() {
  std::vector<float> x;
  for (int i = 0; i < 301; ++i) x.push_back(-6.0f + 0.04f * static_cast<float>(i) + 0.0013f);
  return x;
}

void check_plain(oracle::Act act, const std::vector<float>& dx, const std::vector<float>& x,
                 const std::vector<float>& dy) {
  MatD got(1, static_cast<Index>(x.size())), want(1, static_cast<Index>(x.size()));
  for (std::size_t i = 0; i < x.size(); ++i) {
    got(0, Index(i)) = dx[i];
    want(0, Index(i)) = oracle::activation_grad(act, x[i]) * dy[i];
  }
  BWT_CHECK_GRAD(got, want);
}
}  // namespace

TEST_CASE("backward: activations on every kernel path", "[backward][kernels]") {
  const std::vector<float> x = activation_inputs();
  std::vector<float> dy(x.size()), dx(x.size());
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = 0.5f + 0.01f * static_cast<float>(i % 17);
  pf::ReLU::backward(x.data(), dy.data(), dx.data(), x.size());
  check_plain(oracle::Act::relu, dx, x, dy);
  pf::GELU::backward(x.data(), dy.data(), dx.data(), x.size());
  check_plain(oracle::Act::gelu_erf, dx, x, dy);
  for (const pf::kernels::Isa isa : pf::kernels::testing::runnable_isas("activation backward")) {
    INFO("isa " << pf::kernels::isa_name(isa));
    pf::kernels::gelu_erf_backward(x.data(), dy.data(), dx.data(), x.size(), isa);
    check_plain(oracle::Act::gelu_erf, dx, x, dy);
    pf::kernels::gelu_tanh_backward(x.data(), dy.data(), dx.data(), x.size(), isa);
    check_plain(oracle::Act::gelu_tanh, dx, x, dy);
    pf::kernels::silu_backward(x.data(), dy.data(), dx.data(), x.size(), isa);
    check_plain(oracle::Act::silu, dx, x, dy);
    // SwiGLU: gate x, up a second ramp; in place (dgate over dy, dup over up) as the FFN runs it.
    std::vector<float> up(x.size()), d_up(x.size()), d_gate = dy;
    for (std::size_t i = 0; i < up.size(); ++i) up[i] = 1.5f - 0.01f * static_cast<float>(i);
    d_up = up;
    pf::kernels::swiglu_backward(x.data(), d_up.data(), d_gate.data(), d_gate.data(), d_up.data(), x.size(), isa);
    MatD got_g(1, Index(x.size())), got_u(1, Index(x.size())), want_g(1, Index(x.size())), want_u(1, Index(x.size()));
    for (std::size_t i = 0; i < x.size(); ++i) {
      got_g(0, Index(i)) = d_gate[i];
      got_u(0, Index(i)) = d_up[i];
      want_g(0, Index(i)) = dy[i] * up[i] * oracle::activation_grad(oracle::Act::silu, x[i]);
      want_u(0, Index(i)) = dy[i] * oracle::activation(oracle::Act::silu, x[i]);
    }
    BWT_CHECK_GRAD(got_g, want_g);
    BWT_CHECK_GRAD(got_u, want_u);
  }
}

namespace {
template <typename Act>
void check_ffn(oracle::Act act, int threads) {
  constexpr bool gated = Act::gated;
  const Index n = 37, d = 24, h = 40;
  const Matrix w_up = pft::random_matrix(h, d, 1, 0.3f), w_down = pft::random_matrix(d, h, 2, 0.3f);
  const Matrix w_gate = pft::random_matrix(h, d, 3, 0.3f);
  const Vector b_up = random_vector(h, 4, 0.1f), b_down = random_vector(d, 5, 0.1f), b_gate = random_vector(h, 6, 0.1f);
  using FFN = pf::FeedForward<pf::Dense, Act>;
  FFN ffn = [&] {
    if constexpr (gated) return FFN(pf::Dense(w_gate, b_gate), pf::Dense(w_up, b_up), pf::Dense(w_down, b_down));
    else return FFN(pf::Dense(w_up, b_up), pf::Dense(w_down, b_down));
  }();
  oracle::FFNWeights ow{f64(w_up), f64(b_up), f64(w_down), f64(b_down), gated ? f64(w_gate) : MatD(),
                        gated ? f64(b_gate) : VecD(), act, gated};
  const Matrix x = pft::random_matrix(n, d, 7), dy = pft::random_matrix(n, d, 8);
  typename FFN::Saved saved;
  auto g = ffn.make_gradients();
  Matrix y(n, d), dx(n, d);
  const pf::Context ctx{threads};
  ffn.forward_train(pf::cview(x), pf::view(y), saved, ctx);
  BWT_CHECK_GRAD(y, oracle::ffn(f64(x), ow));
  ffn.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, ctx);
  const auto want = oracle::ffn_backward(f64(x), ow, f64(dy));
  BWT_CHECK_GRAD(dx, want.dx);
  BWT_CHECK_GRAD(g.up.weight, want.dw_up);
  BWT_CHECK_GRAD(g.up.bias, want.db_up);
  BWT_CHECK_GRAD(g.down.weight, want.dw_down);
  BWT_CHECK_GRAD(g.down.bias, want.db_down);
  if constexpr (gated) {
    BWT_CHECK_GRAD(g.gate.weight, want.dw_gate);
    BWT_CHECK_GRAD(g.gate.bias, want.db_gate);
  }
  CHECK_THROWS_WITH(ffn.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, ctx),
                    Catch::Contains("FeedForward::backward: no saved forward"));
  // Kept: a second backward over the same forward finds it unchanged and adds the same again.
  saved.keep = true;
  g = ffn.make_gradients();
  ffn.forward_train(pf::cview(x), pf::view(y), saved, ctx);
  ffn.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, ctx);
  ffn.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, ctx);
  BWT_CHECK_GRAD(dx, want.dx);
  BWT_CHECK_GRAD(g.up.weight, MatD(2.0 * want.dw_up));
  BWT_CHECK_GRAD(g.down.weight, MatD(2.0 * want.dw_down));
  if constexpr (gated) BWT_CHECK_GRAD(g.gate.weight, MatD(2.0 * want.dw_gate));
}
}  // namespace

TEST_CASE("backward: FeedForward, plain and SwiGLU, 1 and 2 threads", "[backward]") {
  for (const int threads : {1, 2}) {
    INFO("threads " << threads);
    check_ffn<pf::ReLU>(oracle::Act::relu, threads);
    check_ffn<pf::GELU>(oracle::Act::gelu_erf, threads);
    check_ffn<pf::GELUTanh>(oracle::Act::gelu_tanh, threads);
    check_ffn<pf::SwiGLU>(oracle::Act::silu, threads);
  }
  using FFN = pf::FeedForward<pf::Dense, pf::SwiGLU>;
  FFN ffn(pf::Dense(4, 6), pf::Dense(4, 6), pf::Dense(6, 4));
  auto g = ffn.make_gradients();
  pf::GradientList list;
  ffn.gradients(list, "feed_forward.", g, pf::FFNNames{"w1.", "w3.", "w2."});
  std::vector<std::string> names;
  for (const auto& e : list.items()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"feed_forward.w1.weight", "feed_forward.w1.bias", "feed_forward.w3.weight",
                                          "feed_forward.w3.bias", "feed_forward.w2.weight", "feed_forward.w2.bias"});
}

namespace {
/// The oracle of one active adapter over a base weight w: y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ, composed from linear pieces.
struct LoRAOracle {
  MatD dx, da, db;
};
LoRAOracle lora_oracle(const MatD& x, const MatD& w, const VecD& bias, const MatD& a, const MatD& b, double s,
                       const MatD& dy) {
  const auto base = oracle::linear_backward(x, w, bias, dy);
  const MatD u = oracle::linear(x, a, VecD());
  const auto up = oracle::linear_backward(u, b, VecD(), MatD(s * dy));
  const auto down = oracle::linear_backward(x, a, VecD(), up.dx);
  return {base.dx + down.dx, down.dw, up.dw};
}
}  // namespace

TEST_CASE("backward: LoRA over Dense and Int8 trains the active adapters, the base frozen", "[backward][lora]") {
  const Index n = 37, in = 48, out = 40;
  const Matrix w = pft::random_matrix(out, in, 1, 0.2f), x = pft::random_matrix(n, in, 2), dy = pft::random_matrix(n, out, 3);
  const Vector bias = random_vector(out, 4, 0.1f);
  const Matrix a = pft::random_matrix(8, in, 5, 0.2f), b = pft::random_matrix(out, 8, 6, 0.2f);
  const Matrix a2 = pft::random_matrix(4, in, 7, 0.2f), b2 = pft::random_matrix(out, 4, 8, 0.2f);
  const auto run = [&](auto layer, const Matrix& applied_weight, int threads) {
    layer.add_adapter("task", a, b, 0.5f);
    layer.add_adapter("other", a2, b2, 2.0f);  // inactive: no gradient, no effect
    layer.set_active("task");
    auto g = layer.make_gradients();
    Matrix dx(n, in);
    layer.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{threads});
    const LoRAOracle want = lora_oracle(f64(x), f64(applied_weight), f64(bias), f64(a), f64(b), 0.5, f64(dy));
    BWT_CHECK_GRAD(dx, want.dx);
    BWT_CHECK_GRAD(g.adapters[0].a, want.da);
    BWT_CHECK_GRAD(g.adapters[0].b, want.db);
    CHECK(g.adapters[1].a.norm() == 0.0f);
    CHECK(g.adapters[1].b.norm() == 0.0f);
    return std::pair(std::move(layer), std::move(g));
  };
  for (const int threads : {1, 2}) {
    INFO("threads " << threads);
    auto [dense, g] = run(pf::LoRA<pf::Dense>(w, bias), w, threads);
    const pf::Int8 int8(w, bias);
    run(pf::LoRA<pf::Int8>(int8), int8.dequantized_weight(), threads);  // QLoRA-style: the int8 base as it applies

    // Names as the parameters'; the base frozen until unfrozen by name.
    pf::GradientList list;
    dense.gradients(list, "wq.", g);
    pf::ParameterList params;
    dense.parameters(params, "wq.");
    REQUIRE(list.size() == params.size());
    for (std::size_t i = 0; i < list.size(); ++i) CHECK(list.items()[i].name == params.items()[i].name);
    CHECK(list.trainable_numel() == (8 + 4) * (in + out));
    CHECK(list.unfreeze("wq.weight") == 1);
    list.zero();
    Matrix dx(n, in);
    dense.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{threads});
    BWT_CHECK_GRAD(g.inner.weight, oracle::linear_backward(f64(x), f64(w), f64(bias), f64(dy)).dw);
    dense.merge();
    CHECK_THROWS_WITH(dense.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{threads}),
                      Catch::Contains("LoRA::backward: the adapters are merged"));
    dense.unmerge();
    dense.add_adapter("late", 2, 4.0f);
    CHECK_THROWS_WITH(dense.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, pf::Context{threads}),
                      Catch::Contains("gradients for 2 adapters, expected 3"));
  }
}
