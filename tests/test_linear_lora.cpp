// LoRA<Inner>: against a float64 evaluation of y = x·Wᵀ + b + Σ s·(x·Aᵀ)·Bᵀ written here, a fresh adapter
// changes nothing, merge/unmerge, switching and removing adapters, one const layer shared by threads, errors.

#include <catch2/catch.hpp>

#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "polyformer/linear/dense.hpp"
#include "polyformer/linear/int8.hpp"
#include "polyformer/linear/lora.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pft::random_matrix;
using pft::Index;
using pft::Matrix;

namespace {

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct AdapterD {
  Matrix a, b;  // (r, in), (out, r)
  double scaling;
};

/// x·Wᵀ + b + Σ s·(x·Aᵀ)·Bᵀ in float64.
MatrixD oracle(const Matrix& x, const Matrix& w, const pf::Vector& bias, const std::vector<AdapterD>& adapters) {
  MatrixD y = x.cast<double>() * w.cast<double>().transpose();
  if (bias.size()) y.rowwise() += bias.cast<double>().transpose();
  for (const auto& ad : adapters)
    y += ad.scaling * (x.cast<double>() * ad.a.cast<double>().transpose()) * ad.b.cast<double>().transpose();
  return y;
}

Matrix forward(const pf::LoRA<pf::Dense>& l, const Matrix& x, int threads = 1) {
  Matrix y(x.rows(), l.out_features());
  l.forward(pf::cview(x), pf::view(y), pf::Context{threads});
  return y;
}

/// max |a − b| / max |b|.
double rel(const Matrix& a, const MatrixD& b) { return (a.cast<double>() - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff(); }

}  // namespace

TEST_CASE("LoRA: a fresh adapter (B = 0) changes nothing", "[linear][lora]") {
  const Matrix w = random_matrix(48, 40, 1, 0.2f);
  const pf::Vector b = random_matrix(1, 48, 2).row(0).transpose();
  pf::LoRA<pf::Dense> plain(pf::Dense(w, b));
  pf::LoRA<pf::Dense> adapted(w, b);
  adapted.add_adapter("fresh", /*rank=*/8, /*alpha=*/16.0f, /*seed=*/3);
  adapted.set_active("fresh");
  REQUIRE(adapted.adapters().size() == 1);
  CHECK(adapted.adapters()[0].a.cwiseAbs().maxCoeff() > 0.0f);
  CHECK(adapted.adapters()[0].scaling == 2.0f);
  const Matrix x = random_matrix(17, 40, 4);
  CHECK(forward(adapted, x) == forward(plain, x));
  adapted.merge();
  CHECK(adapted.inner().weight() == w);
  CHECK(forward(adapted, x) == forward(plain, x));
}

TEST_CASE("LoRA: forward equals the float64 formula for any rows, ranks and threads", "[linear][lora]") {
  struct Shape {
    Index in, out, r;
  };
  for (const Shape s : {Shape{40, 48, 1}, Shape{64, 17, 8}, Shape{768, 96, 16}, Shape{5, 130, 3}}) {
    const Index in = s.in, out = s.out, r = s.r;
    const Matrix w = random_matrix(out, in, 10, 0.1f);
    const pf::Vector bias = random_matrix(1, out, 11).row(0).transpose();
    const AdapterD ad{random_matrix(r, in, 12, 0.1f), random_matrix(out, r, 13, 0.1f), 32.0 / r};
    pf::LoRA<pf::Dense> l(w, bias);
    l.add_adapter("a", ad.a, ad.b, static_cast<float>(ad.scaling));
    l.set_active("a");
    for (const Index n : {1, 2, 7, 64, 200}) {
      for (const int threads : {1, 2}) {
        INFO("in " << in << " out " << out << " r " << r << " n " << n << " threads " << threads);
        const Matrix x = random_matrix(n, in, 14 + static_cast<unsigned>(n));
        CHECK(rel(forward(l, x, threads), oracle(x, w, bias, {ad})) < 2e-6);
      }
    }
  }
}

TEST_CASE("LoRA: one const layer serves several threads at once", "[linear][lora][threads]") {
  const Index in = 64, out = 40, r = 8;
  pf::LoRA<pf::Dense> layer(random_matrix(out, in, 60, 0.1f));
  layer.add_adapter("a", random_matrix(r, in, 61, 0.2f), random_matrix(out, r, 62, 0.2f), 2.0f);
  layer.add_adapter("b", random_matrix(2 * r, in, 63, 0.2f), random_matrix(out, 2 * r, 64, 0.2f), 0.5f);
  layer.activate_only({"a", "b"});
  const pf::LoRA<pf::Dense>& shared = layer;
  // n·r of 8 and 16 per row: the intermediate on the stack for the small inputs, on the heap for 300 rows.
  const std::vector<Matrix> xs{random_matrix(1, in, 65), random_matrix(7, in, 66), random_matrix(300, in, 67)};
  REQUIRE(300 * 2 * r > pf::LoRA<pf::Dense>::stack_floats);
  std::vector<Matrix> expected;
  for (const Matrix& x : xs) expected.push_back(forward(shared, x));
  std::vector<int> mismatches(xs.size(), 0);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < xs.size(); ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 50; ++rep)
        mismatches[i] += !(forward(shared, xs[i]).array() == expected[i].array()).all();
    });
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < xs.size(); ++i) CHECK(mismatches[i] == 0);
}

TEST_CASE("LoRA: merge folds the adapters into the weight and unmerge restores it", "[linear][lora]") {
  const Index in = 96, out = 80;
  const Matrix w = random_matrix(out, in, 20, 0.1f);
  pf::LoRA<pf::Dense> l{pf::Dense(w)};
  const AdapterD a1{random_matrix(4, in, 21, 0.2f), random_matrix(out, 4, 22, 0.2f), 2.0};
  const AdapterD a2{random_matrix(8, in, 23, 0.2f), random_matrix(out, 8, 24, 0.2f), 0.5};
  l.add_adapter("one", a1.a, a1.b, 2.0f);
  l.add_adapter("two", a2.a, a2.b, 0.5f);
  l.activate_only({"one", "two"});
  const Matrix x = random_matrix(33, in, 25);
  const Matrix unmerged = forward(l, x);
  l.merge();
  REQUIRE(l.merged());
  CHECK(pft::max_abs_diff(l.inner().weight(), oracle(Matrix::Identity(in, in), w, {}, {a1, a2}).transpose()) < 1e-6);
  CHECK(rel(forward(l, x), unmerged.cast<double>()) < 1e-6);
  l.merge();  // idempotent
  l.unmerge();
  CHECK_FALSE(l.merged());
  CHECK(pft::max_abs_diff(l.inner().weight(), w) < 1e-6);
  l.unmerge();  // idempotent
  CHECK(pft::max_abs_diff(l.inner().weight(), w) < 1e-6);
  CHECK(rel(forward(l, x), unmerged.cast<double>()) < 1e-6);
}

TEST_CASE("LoRA: adapters switch at run time, merged or not, without reloading the base", "[linear][lora]") {
  const Index in = 64, out = 48;
  const Matrix w = random_matrix(out, in, 30, 0.1f);
  const AdapterD a1{random_matrix(4, in, 31, 0.3f), random_matrix(out, 4, 32, 0.3f), 1.5};
  const AdapterD a2{random_matrix(2, in, 33, 0.3f), random_matrix(out, 2, 34, 0.3f), 4.0};
  pf::LoRA<pf::Dense> l{pf::Dense(w)};
  l.add_adapter("one", a1.a, a1.b, 1.5f);
  l.add_adapter("two", a2.a, a2.b, 4.0f);
  const Matrix x = random_matrix(9, in, 35);
  for (const bool merged : {false, true}) {
    INFO("merged " << merged);
    if (merged) l.merge();
    CHECK(rel(forward(l, x), oracle(x, w, {}, {})) < 2e-6);  // added inactive
    l.set_active("one");
    CHECK(rel(forward(l, x), oracle(x, w, {}, {a1})) < 2e-6);
    l.activate_only({"two"});
    CHECK(rel(forward(l, x), oracle(x, w, {}, {a2})) < 2e-6);
    l.set_active("one");
    CHECK(rel(forward(l, x), oracle(x, w, {}, {a1, a2})) < 2e-6);
    l.set_scaling("two", 1.0f);
    CHECK(rel(forward(l, x), oracle(x, w, {}, {a1, {a2.a, a2.b, 1.0}})) < 2e-6);
    l.set_scaling("two", 4.0f);
    l.activate_only({});
    CHECK(rel(forward(l, x), oracle(x, w, {}, {})) < 2e-6);
    CHECK(l.merged() == merged);
    l.unmerge();
    CHECK(pft::max_abs_diff(l.inner().weight(), w) < 1e-6);
  }
  l.activate_only({"one", "two"});
  l.merge();
  l.remove_adapter("one");
  CHECK(rel(forward(l, x), oracle(x, w, {}, {a2})) < 2e-6);
  l.unmerge();
  CHECK(pft::max_abs_diff(l.inner().weight(), w) < 1e-6);
  CHECK(l.adapters().size() == 1);
}

TEST_CASE("LoRA: bad adapters and names are refused with clear messages", "[linear][lora][errors]") {
  pf::LoRA<pf::Dense> l{pf::Dense(random_matrix(8, 6, 40))};
  CHECK_THROWS_WITH(l.add_adapter("x", Matrix::Zero(2, 5), Matrix::Zero(8, 2), 1.0f),
                    Catch::Contains("LoRA::add_adapter") && Catch::Contains("(2, 5)") && Catch::Contains("(r >= 1, 6)"));
  CHECK_THROWS_WITH(l.add_adapter("x", Matrix::Zero(2, 6), Matrix::Zero(8, 3), 1.0f),
                    Catch::Contains("B has shape (8, 3), expected (8, 2)"));
  CHECK_THROWS_WITH(l.add_adapter("", Matrix::Zero(2, 6), Matrix::Zero(8, 2), 1.0f), Catch::Contains("name is empty"));
  l.add_adapter("x", Matrix::Zero(2, 6), Matrix::Zero(8, 2), 1.0f);
  CHECK_THROWS_WITH(l.add_adapter("x", Matrix::Zero(2, 6), Matrix::Zero(8, 2), 1.0f), Catch::Contains("exists already"));
  CHECK_THROWS_WITH(l.set_active("y"), Catch::Contains("no adapter named 'y' (have 'x')"));
  CHECK_THROWS_WITH(l.activate_only({"x", "z"}), Catch::Contains("no adapter named 'z'"));
  CHECK_THROWS_WITH(l.add_adapter("n", 0, 1.0f), Catch::Contains("rank is 0"));
  CHECK_THROWS_AS(l.set_scaling("x", std::numeric_limits<float>::infinity()), pf::config_error);
  l.merge();
  CHECK_THROWS_WITH(l.mutable_inner(), Catch::Contains("unmerge() before changing the base layer"));
}

TEST_CASE("LoRA: around Int8, adapters add to the quantized product", "[linear][lora][int8]") {
  const Index in = 96, out = 40;
  const Matrix w = random_matrix(out, in, 50, 0.1f);
  const pf::Int8 base(w);
  pf::LoRA<pf::Int8> l(w);
  const Matrix x = random_matrix(13, in, 51);
  Matrix y_base(x.rows(), out), y(x.rows(), out);
  base.forward(pf::cview(x), pf::view(y_base), pf::Context{1});
  l.add_adapter("fresh", 4, 8.0f);
  l.set_active("fresh");
  l.forward(pf::cview(x), pf::view(y), pf::Context{1});
  CHECK(y == y_base);  // B = 0
  const AdapterD ad{random_matrix(4, in, 52, 0.3f), random_matrix(out, 4, 53, 0.3f), 2.0};
  l.add_adapter("a", ad.a, ad.b, 2.0f);
  l.activate_only({"a"});
  l.forward(pf::cview(x), pf::view(y), pf::Context{2});
  const MatrixD delta = oracle(x, Matrix::Zero(out, in), {}, {ad});
  CHECK(rel((y - y_base).eval(), delta) < 1e-5);
  static_assert(!pf::MergeableLinear<pf::Int8>);  // merge() is a compile error for LoRA<Int8>
}
