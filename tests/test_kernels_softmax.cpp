#include "polyformer/kernels/softmax.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "kernels_testing.hpp"

namespace k = polyformer::kernels;
namespace kt = polyformer::kernels::testing;

namespace {
constexpr float inf = std::numeric_limits<float>::infinity();

/// softmax(x + mask) in double; masked (-inf) entries give 0.
std::vector<double> softmax_ref(const std::vector<float>& x, const std::vector<float>* mask) {
  const std::size_t n = x.size();
  std::vector<double> z(n);
  for (std::size_t i = 0; i < n; ++i) z[i] = static_cast<double>(x[i]) + (mask != nullptr ? (*mask)[i] : 0.0f);
  const double m = n == 0 ? -inf : *std::max_element(z.begin(), z.end());
  double s = 0.0;
  for (auto& v : z) s += (v = std::exp(v - m));
  for (auto& v : z) v /= s;
  return z;
}

/// Tolerance for one output p of a row of n entries with max spread `spread` = max - min of the
/// finite logits: x - max rounds (≤ spread·u relative after exp), exp itself ≤ 2 ulp, the sum of n
/// positive terms ≤ n·u, and the final scaling by 1/sum ≤ 2 roundings.
double softmax_tol(double p, std::size_t n, double spread) {
  return (2.0 * (spread + 8.0) + static_cast<double>(n)) * kt::u * p + 1e-30;
}

void check_row(const std::vector<float>& in, const std::vector<float>* mask, double spread) {
  const std::size_t n = in.size();
  const auto ref = softmax_ref(in, mask);
  kt::Guarded x(n, in), xs(n, in);
  std::unique_ptr<kt::Guarded> m;
  if (mask != nullptr) m = std::make_unique<kt::Guarded>(n, *mask);
  k::softmax(x.data(), n, m ? m->data() : nullptr);
  k::softmax_scalar(xs.data(), n, m ? m->data() : nullptr);
  for (std::size_t i = 0; i < n; ++i) {
    CAPTURE(i);
    const double tol = softmax_tol(ref[i], n, spread);
    CHECK(std::fabs(x[i] - ref[i]) <= tol);
    CHECK(std::fabs(xs[i] - ref[i]) <= tol);
    CHECK(std::fabs(x[i] - xs[i]) <= 2.0 * tol);
    if (ref[i] == 0.0) CHECK(x[i] == 0.0f);  // masked entries are exactly 0
  }
}
}  // namespace

TEST_CASE("kernels/softmax: matches scalar twin and double at every tail length", "[kernels][softmax]") {
  for (std::size_t n : kt::lengths()) {
    CAPTURE(n);
    check_row(kt::random_vec(n, -8.0f, 8.0f, static_cast<std::uint32_t>(100 + n)), nullptr, 16.0);
  }
}

TEST_CASE("kernels/softmax: large logits do not overflow", "[kernels][softmax]") {
  for (std::size_t n : {std::size_t{1}, kt::lanes + 1, std::size_t{1000}}) {
    CAPTURE(n);
    // Logits near 1e4 would overflow e^x; with the max subtracted only the spread (≤ 40) matters.
    auto in = kt::random_vec(n, 9980.0f, 10020.0f, static_cast<std::uint32_t>(150 + n));
    // x - max is exact here (Sterbenz: both within a factor 2), so the spread of 40 is what counts.
    check_row(in, nullptr, 40.0);
  }
}

TEST_CASE("kernels/softmax: additive mask, -inf entries become exactly 0", "[kernels][softmax]") {
  for (std::size_t n : kt::lengths()) {
    if (n == 0) continue;
    CAPTURE(n);
    const auto in = kt::random_vec(n, -4.0f, 4.0f, static_cast<std::uint32_t>(200 + n));
    // Causal-style mask: -inf on a pseudo-random subset (never all), mild finite biases elsewhere.
    auto mask = kt::random_vec(n, -2.0f, 0.0f, static_cast<std::uint32_t>(300 + n));
    for (std::size_t i = 1; i < n; i += 3) mask[i] = -inf;
    check_row(in, &mask, 10.0);
    // -inf in x itself (no mask) behaves the same.
    auto in2 = in;
    for (std::size_t i = 0; i < n; ++i)
      if (mask[i] == -inf) in2[i] = -inf;
    check_row(in2, nullptr, 8.0);
  }
}

TEST_CASE("kernels/softmax: fully masked row gives zeros, not NaN", "[kernels][softmax]") {
  for (std::size_t n : kt::lengths()) {
    CAPTURE(n);
    const auto in = kt::random_vec(n, -4.0f, 4.0f, static_cast<std::uint32_t>(400 + n));
    const std::vector<float> mask(n, -inf);
    kt::Guarded x(n, in), xs(n, in), m(n, mask);
    k::softmax(x.data(), n, m.data());
    k::softmax_scalar(xs.data(), n, m.data());
    kt::Guarded y(n, mask);  // the row itself all -inf, no mask
    k::softmax(y.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      CHECK(x[i] == 0.0f);
      CHECK(xs[i] == 0.0f);
      CHECK(y[i] == 0.0f);
    }
  }
}

TEST_CASE("kernels/softmax: rows sum to 1", "[kernels][softmax]") {
  const std::size_t n = 4099;
  kt::Guarded x(n, kt::random_vec(n, -10.0f, 10.0f, 500));
  k::softmax(x.data(), n);
  double s = 0.0;
  for (std::size_t i = 0; i < n; ++i) s += x[i];
  // Each p_i has relative error ≤ (2·(20 + 8) + n)·u (softmax_tol), so Σ p_i = 1 within that.
  CHECK(std::fabs(s - 1.0) <= (56.0 + static_cast<double>(n)) * kt::u);
}

TEST_CASE("kernels/softmax_backward: every instruction set equals the scalar twin and double", "[kernels][softmax]") {
  for (k::Isa isa : kt::runnable_isas("softmax_backward"))
    for (std::size_t n : kt::lengths()) {
      CAPTURE(n);
      const auto p = kt::random_vec(n, 0.0f, 1.0f, static_cast<std::uint32_t>(300 + n));
      const auto dp = kt::random_vec(n, -2.0f, 2.0f, static_cast<std::uint32_t>(400 + n));
      const float delta = 0.375f;
      kt::Guarded ds(n, dp), ds_scalar(n, dp), pg(n, p);
      k::softmax_backward(pg.data(), ds.data(), delta, n, isa);
      k::softmax_backward_scalar(pg.data(), ds_scalar.data(), delta, n);
      for (std::size_t i = 0; i < n; ++i) {
        const double want = static_cast<double>(p[i]) * (static_cast<double>(dp[i]) - delta);
        CHECK(ds[i] == ds_scalar[i]);  // one subtraction and one product, each rounded once
        CHECK(std::fabs(ds[i] - want) <= 2.0 * kt::u * (std::fabs(want) + std::fabs(p[i] * delta)) + 1e-30);
      }
    }
}
