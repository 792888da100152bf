// Backward of MixtureOfExperts against central finite differences of a float64 forward written here from the
// layer's definition (router softmax, top-k with lower-index ties, gates with and without renormalization,
// capacity in priority order, the experts' FFNs, the load-balancing loss): k = 1 (Switch) and k = 2
// (renormalized), with and without capacity drops, plain (GELU) and gated (SwiGLU) experts, load-balance weights
// 0, 0.01 and 0.5, 1 and 2 threads; a frozen router; 1 against 2 threads on a large batch; an encoder layer with an
// MoE FFN trained end to end; gradient names and bad input.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "backward_testing.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/layers/moe.hpp"

using namespace bwt;
namespace oracle = backward_oracle;
using pf::Matrix;
using pf::Vector;

static_assert(pf::TrainableFeedForward<pf::MixtureOfExperts<pf::Dense, pf::GELU>>);
static_assert(pf::TrainableFeedForward<pf::MixtureOfExperts<pf::Dense, pf::SwiGLU>>);

namespace {

template <typename Act>
using MoE = pf::MixtureOfExperts<pf::Dense, Act>;
template <typename Act>
using Expert = pf::FeedForward<pf::Dense, Act>;

/// Weights N(0, scale²/in), bias N(0, 0.1²).
pf::Dense dense(Index in, Index out, unsigned seed, float scale = 1.0f) {
  return pf::Dense(pft::random_matrix(out, in, seed, scale / std::sqrt(static_cast<float>(in))),
                   random_vector(out, seed + 1000, 0.1f));
}

/// Router logits of spread ~2 (decisive but not saturated probabilities), experts of O(1) outputs.
template <typename Act>
MoE<Act> make_moe(Index n_exp, Index d, Index h, int k, unsigned seed, pf::MoEOptions options) {
  std::vector<Expert<Act>> experts;
  for (Index e = 0; e < n_exp; ++e) {
    const unsigned s = seed + 10 * static_cast<unsigned>(e);
    if constexpr (Act::gated) experts.emplace_back(dense(d, h, s), dense(d, h, s + 1), dense(h, d, s + 2));
    else experts.emplace_back(dense(d, h, s), dense(h, d, s + 1));
  }
  return MoE<Act>(dense(d, n_exp, seed + 777, 2.0f), std::move(experts), k, options);
}

// ---- The module's parameters in float64, as parameters() lists them. ----

struct Params {
  std::vector<std::string> names;
  std::vector<std::vector<Index>> shapes;
  std::vector<std::vector<double>> values;  // row-major

  std::size_t index(const std::string& name) const {
    const auto it = std::find(names.begin(), names.end(), name);
    return static_cast<std::size_t>(it - names.begin());  // names.size() when absent
  }
};

template <typename Module>
Params read_params(Module& module) {
  pf::ParameterList list;
  module.parameters(list, "");
  Params p;
  for (const auto& item : list.items()) {
    std::vector<float> v(static_cast<std::size_t>(item.numel()));
    item.read(v.data());
    p.names.push_back(item.name);
    p.shapes.push_back(item.shape);
    p.values.emplace_back(v.begin(), v.end());
  }
  return p;
}

/// A flat row-major buffer of `shape` as a matrix; a vector (n) becomes (n, 1).
MatD as_matrix(const std::vector<double>& v, const std::vector<Index>& shape) {
  const Index rows = shape[0], cols = shape.size() > 1 ? shape[1] : 1;
  return Eigen::Map<const MatD>(v.data(), rows, cols);
}

/// The gradient listed under `name`, shaped as as_matrix does.
MatD read_gradient(const pf::GradientList& list, const std::string& name) {
  const pf::Gradient& g = list.at(name);
  std::vector<float> v(static_cast<std::size_t>(g.numel()));
  g.read(v.data());
  return as_matrix(std::vector<double>(v.begin(), v.end()), g.shape);
}

// ---- The float64 forward. ----

struct Linear64 {
  MatD w;  // (out, in)
  VecD b;  // (out) or empty
};

Linear64 linear_of(const Params& p, const std::string& prefix) {
  Linear64 l;
  const std::size_t w = p.index(prefix + "weight"), b = p.index(prefix + "bias");
  REQUIRE(w < p.names.size());
  l.w = as_matrix(p.values[w], p.shapes[w]);
  if (b < p.names.size()) l.b = as_matrix(p.values[b], p.shapes[b]).col(0);
  return l;
}

VecD apply(const Linear64& l, const VecD& x) {
  VecD y = l.w * x;
  if (l.b.size() != 0) y += l.b;
  return y;
}

struct Weights64 {
  Linear64 router;
  std::vector<Linear64> gate, up, down;  // (n_experts) each; gate empty when plain
};

Weights64 weights_of(const Params& p, Index n_exp, bool gated) {
  Weights64 w;
  w.router = linear_of(p, "router.");
  for (Index e = 0; e < n_exp; ++e) {
    const std::string prefix = "experts." + std::to_string(e) + ".";
    if (gated) w.gate.push_back(linear_of(p, prefix + "gate_proj."));
    w.up.push_back(linear_of(p, prefix + "linear1."));
    w.down.push_back(linear_of(p, prefix + "linear2."));
  }
  return w;
}

struct Spec {
  Index n_exp = 4;
  int k = 1;
  bool renormalize = false;
  double capacity_factor = 0.0;
  bool gated = false;
  oracle::Act act = oracle::Act::gelu_erf;  // plain experts' activation; gated ones use silu
};

struct Forward64 {
  MatD y;                      // (n, d)
  MatD probs;                  // (n, E)
  double aux = 0.0;
  std::vector<Index> choice;   // (n·k)
  std::vector<char> accepted;  // (n·k)
  double margin = std::numeric_limits<double>::infinity();  // smallest gap between ranked probabilities up to k
};

VecD expert64(const Weights64& w, Index e, const VecD& x, const Spec& s) {
  const auto u = static_cast<std::size_t>(e);
  VecD hidden = apply(w.up[u], x);
  if (s.gated) {
    const VecD g = apply(w.gate[u], x);
    for (Index i = 0; i < hidden.size(); ++i) hidden(i) *= oracle::activation(oracle::Act::silu, g(i));
  } else {
    for (Index i = 0; i < hidden.size(); ++i) hidden(i) = oracle::activation(s.act, hidden(i));
  }
  return apply(w.down[u], hidden);
}

/// The MoE forward of the file comment, token by token in float64.
Forward64 forward64(const MatD& x, const Weights64& w, const Spec& s) {
  const Index n = x.rows(), d = x.cols(), n_exp = s.n_exp;
  const int k = s.k;
  Forward64 f;
  f.y = MatD::Zero(n, d);
  f.probs.resize(n, n_exp);
  std::vector<double> gates;
  std::vector<Index> requests(static_cast<std::size_t>(n_exp), 0);
  for (Index t = 0; t < n; ++t) {
    const VecD z = apply(w.router, x.row(t).transpose());
    double z_max = z(0), sum = 0.0;
    for (Index e = 1; e < n_exp; ++e) z_max = std::max(z_max, z(e));
    for (Index e = 0; e < n_exp; ++e) sum += f.probs(t, e) = std::exp(z(e) - z_max);
    for (Index e = 0; e < n_exp; ++e) f.probs(t, e) /= sum;
    std::vector<Index> order(static_cast<std::size_t>(n_exp));
    std::iota(order.begin(), order.end(), Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return f.probs(t, a) > f.probs(t, b); });
    for (int c = 0; c < k && c + 1 < n_exp; ++c)
      f.margin = std::min(f.margin, f.probs(t, order[std::size_t(c)]) - f.probs(t, order[std::size_t(c) + 1]));
    double chosen_sum = 0.0;
    for (int c = 0; c < k; ++c) chosen_sum += f.probs(t, order[std::size_t(c)]);
    for (int c = 0; c < k; ++c) {
      const Index e = order[std::size_t(c)];
      f.choice.push_back(e);
      gates.push_back(s.renormalize ? f.probs(t, e) / chosen_sum : f.probs(t, e));
      ++requests[std::size_t(e)];
    }
  }
  Index capacity = n;
  if (s.capacity_factor > 0.0 && n > 0)
    capacity = std::min<Index>(n, std::max<Index>(1, static_cast<Index>(std::ceil(
                                                        s.capacity_factor * double(n) * k / double(n_exp) - 1e-9))));
  f.accepted.assign(std::size_t(n * k), 0);
  std::vector<Index> filled(static_cast<std::size_t>(n_exp), 0);
  for (int c = 0; c < k; ++c)
    for (Index t = 0; t < n; ++t) {
      const std::size_t i = std::size_t(t * k + c);
      Index& used = filled[std::size_t(f.choice[i])];
      if (used < capacity) {
        ++used;
        f.accepted[i] = 1;
      }
    }
  for (Index t = 0; t < n; ++t)
    for (int c = 0; c < k; ++c) {
      const std::size_t i = std::size_t(t * k + c);
      if (f.accepted[i]) f.y.row(t) += gates[i] * expert64(w, f.choice[i], x.row(t).transpose(), s).transpose();
    }
  for (Index e = 0; e < n_exp; ++e) {
    double p_mean = 0.0;
    for (Index t = 0; t < n; ++t) p_mean += f.probs(t, e) / double(n);
    f.aux += double(requests[std::size_t(e)]) / double(n * k) * p_mean;
  }
  f.aux *= double(n_exp);
  return f;
}

// ---- Central differences of Σ y ⊙ dy and of aux. ----

struct Numeric {
  MatD dx_dot, dx_aux;                // (n, d): ∂(Σ y ⊙ dy)/∂x, ∂aux/∂x
  std::vector<MatD> dp_dot, dp_aux;  // per parameter, shaped as as_matrix
  int routing_changes = 0;           // perturbed forwards whose choices or acceptances differ
};

Numeric numeric_gradients(const MatD& x, Params p, const Spec& s, const MatD& dy) {
  constexpr double h = 1e-6;
  const Forward64 base = forward64(x, weights_of(p, s.n_exp, s.gated), s);
  Numeric num;
  const auto terms = [&](const MatD& xx, const Params& pp) {
    const Forward64 f = forward64(xx, weights_of(pp, s.n_exp, s.gated), s);
    num.routing_changes += f.choice != base.choice || f.accepted != base.accepted;
    return std::pair<double, double>((f.y.array() * dy.array()).sum(), f.aux);
  };
  num.dx_dot.resize(x.rows(), x.cols());
  num.dx_aux.resize(x.rows(), x.cols());
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < x.cols(); ++j) {
      MatD xp = x, xm = x;
      xp(i, j) += h;
      xm(i, j) -= h;
      const auto [dot_p, aux_p] = terms(xp, p);
      const auto [dot_m, aux_m] = terms(xm, p);
      num.dx_dot(i, j) = (dot_p - dot_m) / (2 * h);
      num.dx_aux(i, j) = (aux_p - aux_m) / (2 * h);
    }
  for (std::size_t q = 0; q < p.names.size(); ++q) {
    std::vector<double> d_dot(p.values[q].size()), d_aux(p.values[q].size());
    for (std::size_t j = 0; j < p.values[q].size(); ++j) {
      const double v = p.values[q][j];
      p.values[q][j] = v + h;
      const auto [dot_p, aux_p] = terms(x, p);
      p.values[q][j] = v - h;
      const auto [dot_m, aux_m] = terms(x, p);
      p.values[q][j] = v;
      d_dot[j] = (dot_p - dot_m) / (2 * h);
      d_aux[j] = (aux_p - aux_m) / (2 * h);
    }
    num.dp_dot.push_back(as_matrix(d_dot, p.shapes[q]));
    num.dp_aux.push_back(as_matrix(d_aux, p.shapes[q]));
  }
  return num;
}

/// BWT_CHECK_GRAD with the gradient's name and size in the message.
template <typename Got>
void check_gradient(const Got& got, const MatD& want, const std::string& what) {
  const double err = relative_error(got, want);
  INFO(what << ": relative error " << err << " (|want| " << want.norm() << ")");
  CHECK(err <= tolerance);
}

/// The float routing of a training forward equals the float64 one.
template <typename Act>
void check_routing(const typename MoE<Act>::Saved& saved, const Forward64& f, int k) {
  const auto& r = saved.routing;
  REQUIRE(r.tokens * k == static_cast<Index>(f.choice.size()));
  for (Index t = 0; t < r.tokens; ++t)
    for (int c = 0; c < k; ++c) {
      const std::size_t i = std::size_t(t * k + c);
      INFO("token " << t << " choice " << c);
      REQUIRE(r.expert_of(t, c) == f.choice[i]);
      REQUIRE(r.dropped(t, c) == !f.accepted[i]);
    }
}

struct Case {
  int k;
  bool renormalize;
  double capacity_factor;
  const char* what;
};

/// Whether a routing is usable: every ranked gap above 1e-4 (float and float64 agree, and h = 1e-6 moves no token
/// across), and with capacity a token that loses all its choices (and, for k = 2, one that keeps only one).
bool usable(const Forward64& f, const Case& c, Index n) {
  if (f.margin < 1e-4) return false;
  if (c.capacity_factor <= 0.0) return true;
  bool all_dropped = false, partly = false;
  for (Index t = 0; t < n; ++t) {
    int kept = 0;
    for (int j = 0; j < c.k; ++j) kept += f.accepted[std::size_t(t * c.k + j)];
    all_dropped |= kept == 0;
    partly |= kept > 0 && kept < c.k;
  }
  return all_dropped && (c.k == 1 || partly);
}

template <typename Act>
void check_case(const Case& c) {
  const Index n = 12, d = 6, h = 8, n_exp = 4;
  const Spec spec{n_exp, c.k, c.renormalize, c.capacity_factor, Act::gated,
                  Act::gated ? oracle::Act::silu : oracle::Act::gelu_erf};
  // The first seed whose routing is usable.
  unsigned seed = 0;
  MoE<Act> moe;
  Matrix x;
  Params params;
  Forward64 base;
  bool found = false;
  while (!found && seed < 200) {
    seed += 1;
    moe = make_moe<Act>(n_exp, d, h, c.k, 100 * seed, pf::MoEOptions{c.renormalize, c.capacity_factor});
    x = pft::random_matrix(n, d, 100 * seed + 50);
    params = read_params(moe);
    base = forward64(f64(x), weights_of(params, n_exp, Act::gated), spec);
    found = usable(base, c, n);
  }
  INFO(Act::name << ", " << c.what << ", seed " << seed);
  REQUIRE(found);
  const Matrix dy = pft::random_matrix(n, d, 100 * seed + 60);
  const Numeric num = numeric_gradients(f64(x), params, spec, f64(dy));
  REQUIRE(num.routing_changes == 0);

  for (const double weight : {0.0, 0.01, 0.5})
    for (const bool aux_only : {false, true}) {  // aux_only: dy = 0, the gradient of weight · aux alone
      if (aux_only && weight == 0.0) continue;
      for (const int threads : {1, 2}) {
        INFO("load_balance_weight " << weight << (aux_only ? ", dy = 0" : "") << ", threads " << threads);
        moe.set_options(pf::MoEOptions{c.renormalize, c.capacity_factor, weight});
        const pf::Context ctx{threads};
        typename MoE<Act>::Saved saved;
        Matrix y(n, d), dx(n, d);
        moe.forward_train(pf::cview(x), pf::view(y), saved, ctx);
        check_routing<Act>(saved, base, c.k);
        BWT_CHECK_GRAD(y, base.y);
        CHECK(saved.aux_loss == Approx(base.aux).epsilon(1e-6));
        CHECK(saved.options.load_balance_weight == weight);
        // The inference forward is the same.
        CHECK(pft::max_abs_diff(moe.forward(x, ctx), y) == 0.0);

        auto g = moe.make_gradients();
        const pf::GradientList list = pf::gradients_of(moe, g);
        const Matrix upstream = aux_only ? Matrix(Matrix::Zero(n, d)) : dy;
        moe.backward(pf::cview(x), pf::cview(upstream), pf::view(dx), g, saved, ctx);
        const double dot_scale = aux_only ? 0.0 : 1.0;
        check_gradient(dx, MatD(dot_scale * num.dx_dot + weight * num.dx_aux), "dx");
        REQUIRE(list.size() == params.names.size());
        for (std::size_t q = 0; q < params.names.size(); ++q) {
          REQUIRE(list.items()[q].name == params.names[q]);
          check_gradient(read_gradient(list, params.names[q]),
                         MatD(dot_scale * num.dp_dot[q] + weight * num.dp_aux[q]), params.names[q]);
        }
      }
    }

  // A frozen router gets nothing, x still its whole gradient, the experts theirs; accumulate_dx adds to dx.
  const double weight = 0.5;
  moe.set_options(pf::MoEOptions{c.renormalize, c.capacity_factor, weight});
  typename MoE<Act>::Saved saved;
  Matrix y(n, d);
  moe.forward_train(pf::cview(x), pf::view(y), saved, {});
  auto g = moe.make_gradients();
  const pf::GradientList list = pf::gradients_of(moe, g);
  CHECK(list.freeze("router.") == 2);
  Matrix dx = Matrix::Ones(n, d);
  moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, {}, /*accumulate_dx=*/true);
  CHECK(g.router.weight.size() == 0);
  CHECK(g.router.bias.size() == 0);
  check_gradient(dx, MatD(num.dx_dot + weight * num.dx_aux + MatD::Ones(n, d)), "dx, router frozen");
  for (std::size_t q = 0; q < params.names.size(); ++q)
    if (params.names[q].starts_with("experts."))
      check_gradient(read_gradient(list, params.names[q]), MatD(num.dp_dot[q] + weight * num.dp_aux[q]),
                     params.names[q] + ", router frozen");
}

}  // namespace

TEMPLATE_TEST_CASE("backward: MixtureOfExperts against finite differences of a float64 forward", "[backward][moe]",
                   pf::GELU, pf::SwiGLU) {
  for (const Case& c : {Case{1, false, 0.0, "k = 1 (Switch), unlimited"},
                        Case{1, false, 0.75, "k = 1 (Switch), capacity 0.75 with drops"},
                        Case{2, true, 0.0, "k = 2 renormalized, unlimited"},
                        Case{2, true, 0.5, "k = 2 renormalized, capacity 0.5 with drops"},
                        Case{2, false, 0.5, "k = 2 raw gates, capacity 0.5 with drops"}})
    check_case<TestType>(c);
}

TEST_CASE("backward: MixtureOfExperts on 2 threads matches 1 thread on a large batch", "[backward][moe][threads]") {
  // n·k·d = 2048 · 2 · 32: the per-token loops split over threads, and the experts run one per thread.
  const Index n = 2048, d = 32, h = 48;
  const auto moe = make_moe<pf::SwiGLU>(4, d, h, 2, 5, pf::MoEOptions{true, 1.0, 0.01});
  const Matrix x = pft::random_matrix(n, d, 6), dy = pft::random_matrix(n, d, 7);
  std::vector<Matrix> dxs, ys;
  std::vector<MoE<pf::SwiGLU>::Gradients> gs;
  for (const int threads : {1, 2}) {
    MoE<pf::SwiGLU>::Saved saved;
    Matrix y(n, d), dx(n, d);
    auto g = moe.make_gradients();
    moe.forward_train(pf::cview(x), pf::view(y), saved, pf::Context{threads});
    CHECK(saved.routing.dropped_count() > 0);
    moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, pf::Context{threads});
    ys.push_back(y);
    dxs.push_back(dx);
    gs.push_back(std::move(g));
  }
  CHECK(pft::max_abs_diff(ys[0], ys[1]) == 0.0);
  BWT_CHECK_GRAD(dxs[1], f64(dxs[0]));
  BWT_CHECK_GRAD(gs[1].router.weight, f64(gs[0].router.weight));
  BWT_CHECK_GRAD(gs[1].router.bias, f64(gs[0].router.bias));
  for (std::size_t e = 0; e < 4; ++e) {
    INFO("expert " << e);
    BWT_CHECK_GRAD(gs[1].experts[e].gate.weight, f64(gs[0].experts[e].gate.weight));
    BWT_CHECK_GRAD(gs[1].experts[e].up.weight, f64(gs[0].experts[e].up.weight));
    BWT_CHECK_GRAD(gs[1].experts[e].down.weight, f64(gs[0].experts[e].down.weight));
    BWT_CHECK_GRAD(gs[1].experts[e].down.bias, f64(gs[0].experts[e].down.bias));
  }
}

TEST_CASE("backward: MixtureOfExperts gradient names, keep, no dx, bad input", "[backward][moe][errors]") {
  const Index d = 6, h = 8, n = 10;
  auto moe = make_moe<pf::SwiGLU>(3, d, h, 2, 1, pf::MoEOptions{true, 0.0, 0.1});
  auto g = moe.make_gradients();
  // Named as the parameters, under a prefix and with llama2.c's projection names.
  const pf::FFNNames llama{"w1.", "w3.", "w2."};
  pf::GradientList list;
  moe.gradients(list, "ffn.", g, llama);
  pf::ParameterList params;
  moe.parameters(params, "ffn.", llama);
  REQUIRE(list.size() == params.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    CHECK(list.items()[i].name == params.items()[i].name);
    CHECK(list.items()[i].shape == params.items()[i].shape);
  }
  CHECK(list.find("ffn.experts.2.w3.bias") != nullptr);
  CHECK(list.freeze("ffn.experts.1.") == 6);
  CHECK(g.experts[1].up.weight.size() == 0);
  list.unfreeze("ffn.");

  const Matrix x = pft::random_matrix(n, d, 2), dy = pft::random_matrix(n, d, 3);
  Matrix y(n, d), dx(n, d);
  MoE<pf::SwiGLU>::Saved saved;
  CHECK_THROWS_AS(moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, {}), pf::config_error);
  CHECK_THROWS_WITH(moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, {}),
                    Catch::Contains("MixtureOfExperts::backward: no saved forward"));
  moe.forward_train(pf::cview(x), pf::view(y), saved, {});
  // Bad arguments throw before the saved forward is used.
  Matrix bad_dy(n, d + 1), bad_dx(n - 1, d), bad_x(n + 1, d);
  CHECK_THROWS_AS(moe.backward(pf::cview(x), pf::cview(bad_dy), pf::view(dx), g, saved, {}), pf::shape_error);
  CHECK_THROWS_WITH(moe.backward(pf::cview(x), pf::cview(bad_dy), pf::view(dx), g, saved, {}),
                    Catch::Contains("MixtureOfExperts::backward: dy has shape (10, 7), expected (10, 6)"));
  CHECK_THROWS_WITH(moe.backward(pf::cview(x), pf::cview(dy), pf::view(bad_dx), g, saved, {}),
                    Catch::Contains("MixtureOfExperts::backward: dx has shape (9, 6), expected (10, 6)"));
  CHECK_THROWS_WITH(moe.backward(pf::cview(bad_x), pf::cview(dy), pf::view(dx), g, saved, {}),
                    Catch::Contains("MixtureOfExperts::backward: x has shape (11, 6), expected (10, 6)"));
  auto other = make_moe<pf::SwiGLU>(4, d, h, 2, 1, {}).make_gradients();
  CHECK_THROWS_WITH(moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), other, saved, {}),
                    Catch::Contains("MixtureOfExperts::backward: g holds gradients for 4 experts, expected 3"));
  g.router.weight.resize(d, 3);
  CHECK_THROWS_WITH(
      moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, {}),
      Catch::Contains("the gradient of router.weight has shape (6, 3), expected (3, 6) or empty (frozen)"));
  CHECK_THROWS_WITH(moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, pf::Context{0}),
                    Catch::Contains("MixtureOfExperts::backward: threads is 0"));
  CHECK(g.experts[0].down.weight.norm() == 0.0f);  // the refused calls added nothing
  g = moe.make_gradients();
  moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, {});
  const Matrix first_dx = dx, first_router = g.router.weight, first_down = g.experts[0].down.weight;
  CHECK(first_router.norm() > 0.0f);
  // Used once: a second backward is refused.
  CHECK_THROWS_AS(moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, {}), pf::config_error);
  CHECK_THROWS_WITH(moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, {}),
                    Catch::Contains("MixtureOfExperts::backward: no saved forward"));
  // Kept: two backward passes over one forward add up, and the experts' saved forwards stay too.
  saved.keep = true;
  g = moe.make_gradients();
  moe.forward_train(pf::cview(x), pf::view(y), saved, pf::Context{2});
  moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, pf::Context{2});
  moe.backward(pf::cview(x), pf::cview(dy), pf::view(dx), g, saved, pf::Context{2});
  BWT_CHECK_GRAD(dx, f64(first_dx));
  BWT_CHECK_GRAD(g.router.weight, MatD(2.0 * f64(first_router)));
  BWT_CHECK_GRAD(g.experts[0].down.weight, MatD(2.0 * f64(first_down)));
  // A dx of no columns: the parameters' gradients only.
  saved.keep = false;
  g = moe.make_gradients();
  Matrix no_dx(n, 0);
  moe.backward(pf::cview(x), pf::cview(dy), pf::view(no_dx), g, saved, {});
  BWT_CHECK_GRAD(g.router.weight, f64(first_router));
  BWT_CHECK_GRAD(g.experts[0].down.weight, f64(first_down));
  // The load-balance weight is checked.
  CHECK_THROWS_AS(moe.set_options(pf::MoEOptions{true, 0.0, -0.1}), pf::config_error);
  CHECK_THROWS_WITH(moe.set_options(pf::MoEOptions{true, 0.0, std::nan("")}),
                    Catch::Contains("options.load_balance_weight is nan, expected a finite number >= 0"));
  // The forward_train's own checks.
  Matrix bad_y(n - 1, d);
  CHECK_THROWS_WITH(moe.forward_train(pf::cview(x), pf::view(bad_y), saved, {}),
                    Catch::Contains("MixtureOfExperts::forward_train: y has shape (9, 6), expected (10, 6)"));
  CHECK_THROWS_WITH(MoE<pf::SwiGLU>().forward_train(pf::cview(x), pf::view(y), saved, {}),
                    Catch::Contains("MixtureOfExperts::forward_train: no experts"));
}

namespace {

template <typename Act, pf::NormPlacement P>
using MoEEncoder = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, Act, P, pf::NoRotary, MoE<Act>>;

template <typename Layer>
void train_encoder_layer(int threads) {
  using Act = typename Layer::FFN::activation_type;
  const Index d = 16, heads = 4, hidden = 24, batch = 2, seq = 9, n = batch * seq;
  Layer layer(typename Layer::Attention(dense(d, d, 1), dense(d, d, 2), dense(d, d, 3), dense(d, d, 4),
                                        pf::HeadConfig{heads}),
              make_moe<Act>(4, d, hidden, 2, 9, pf::MoEOptions{true, 1.0, 0.01}), pf::LayerNorm(d),
              pf::LayerNorm(d));
  const Matrix x = pft::random_matrix(n, d, 5), dy = pft::random_matrix(n, d, 6);
  const pf::Context ctx{threads};
  auto g = layer.make_gradients();
  const pf::GradientList grads = pf::gradients_of(layer, g);
  pf::ParameterList params;
  layer.parameters(params, "");
  REQUIRE(grads.size() == params.size());
  for (std::size_t i = 0; i < params.size(); ++i) CHECK(grads.items()[i].name == params.items()[i].name);
  CHECK(grads.find("router.weight") != nullptr);  // torch's names: the FFN's tensors sit on the layer
  CHECK(grads.find("experts.3.linear2.weight") != nullptr);
  typename Layer::Saved saved;
  Matrix y(n, d), dx(n, d);
  layer.forward_train(pf::cview(x), batch, pf::MaskSpec::causal_mask(), pf::view(y), saved, ctx);
  CHECK(pft::max_abs_diff(y, layer.forward(x, batch, pf::MaskSpec::causal_mask(), ctx)) < 1e-5);
  CHECK(saved.ffn.aux_loss > 0.0);
  layer.backward(pf::cview(dy), pf::view(dx), g, saved, ctx);
  CHECK(dx.allFinite());
  CHECK(dx.norm() > 0.0f);
  for (const auto& item : grads.items()) {
    INFO(item.name);
    std::vector<float> v(static_cast<std::size_t>(item.numel()));
    item.read(v.data());
    const Eigen::Map<const pf::Vector> values(v.data(), item.numel());
    CHECK(values.allFinite());
    if (item.name.find("router.") != std::string::npos || item.name.find("self_attn.") != std::string::npos)
      CHECK(values.norm() > 0.0f);
  }
  double expert_norm = 0.0;
  for (const auto& e : g.ffn.experts) expert_norm += e.down.weight.norm();
  CHECK(expert_norm > 0.0);
}

}  // namespace

TEST_CASE("backward: an EncoderLayer with an MoE FFN trains (pre- and post-norm)", "[backward][moe][blocks]") {
  for (const int threads : {1, 2}) {
    INFO("threads " << threads);
    train_encoder_layer<MoEEncoder<pf::SwiGLU, pf::NormPlacement::pre>>(threads);
    train_encoder_layer<MoEEncoder<pf::GELU, pf::NormPlacement::post>>(threads);
  }
}
