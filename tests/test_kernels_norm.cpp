#include "polyformer/kernels/norm.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels_testing.hpp"

namespace k = polyformer::kernels;
namespace kt = polyformer::kernels::testing;

namespace {

// Error model for both norms: each float accumulation over n terms (the mean, Σ(x - mean)², Σx²)
// has a relative error that grows like √n·u for random data (rounding errors behave as a random walk,
// Higham §2.8/§4.2; the worst case n·u is far too pessimistic to test anything). The mean's error δμ
// shifts every output by |g|·rstd·δμ with δμ ≈ √n·u·mean|x|; the variance's error scales every
// output by ≈ √n·u/2; the final affine step adds a few roundings. A factor 2 on √n + 4 covers the
// constants (measured errors use < 5% of this bound at n = 7..4099; a wrong element is off by O(1)).
double accum_factor(std::size_t n) { return 2.0 * (std::sqrt(static_cast<double>(n)) + 4.0) * kt::u; }

struct RefNorm {
  std::vector<double> y;
  double rstd = 0.0, mean_abs = 0.0;
};

RefNorm layer_norm_ref(const std::vector<float>& x, const std::vector<float>* g, const std::vector<float>* b,
                       float eps) {
  const std::size_t n = x.size();
  RefNorm r;
  r.y.resize(n);
  if (n == 0) return r;
  double mean = 0.0, var = 0.0;
  for (float v : x) mean += v, r.mean_abs += std::fabs(v);
  mean /= static_cast<double>(n);
  r.mean_abs /= static_cast<double>(n);
  for (float v : x) var += (v - mean) * (v - mean);
  var /= static_cast<double>(n);
  r.rstd = 1.0 / std::sqrt(var + eps);
  for (std::size_t i = 0; i < n; ++i)
    r.y[i] = (x[i] - mean) * r.rstd * (g != nullptr ? (*g)[i] : 1.0f) + (b != nullptr ? (*b)[i] : 0.0f);
  return r;
}

double layer_norm_tol(const RefNorm& r, std::size_t n, std::size_t i, const std::vector<float>* g,
                      const std::vector<float>* b) {
  const double gi = g != nullptr ? std::fabs((*g)[i]) : 1.0;
  const double bi = b != nullptr ? std::fabs((*b)[i]) : 0.0;
  return accum_factor(n) * (gi * r.rstd * r.mean_abs + std::fabs(r.y[i]) + bi) + 1e-30;
}

}  // namespace

TEST_CASE("kernels/layer_norm: matches scalar twin and double at every tail length", "[kernels][norm]") {
  const float eps = 1e-5f;
  for (k::Isa isa : kt::runnable_isas("layer_norm"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    // Offset 10 with spread ±3: the two-pass variance must not cancel.
    const auto vx = kt::random_vec(n, 7.0f, 13.0f, static_cast<std::uint32_t>(600 + n));
    const auto vg = kt::random_vec(n, 0.5f, 1.5f, static_cast<std::uint32_t>(700 + n));
    const auto vb = kt::random_vec(n, -1.0f, 1.0f, static_cast<std::uint32_t>(800 + n));
    const kt::Guarded x(n, vx), g(n, vg), b(n, vb);
    for (int variant = 0; variant < 4; ++variant) {
      CAPTURE(variant);
      const bool has_g = (variant & 1) != 0, has_b = (variant & 2) != 0;
      const auto ref = layer_norm_ref(vx, has_g ? &vg : nullptr, has_b ? &vb : nullptr, eps);
      kt::Guarded y(n), ys(n);
      k::layer_norm(x.data(), y.data(), has_g ? g.data() : nullptr, has_b ? b.data() : nullptr, n, eps, isa);
      k::layer_norm_scalar(x.data(), ys.data(), has_g ? g.data() : nullptr, has_b ? b.data() : nullptr, n, eps);
      for (std::size_t i = 0; i < n; ++i) {
        const double tol = layer_norm_tol(ref, n, i, has_g ? &vg : nullptr, has_b ? &vb : nullptr);
        CHECK(std::fabs(y[i] - ref.y[i]) <= tol);
        CHECK(std::fabs(ys[i] - ref.y[i]) <= tol);
        CHECK(std::fabs(y[i] - ys[i]) <= 2.0 * tol);
      }
    }
  }
}

TEST_CASE("kernels/layer_norm: in place (x == y) equals out of place", "[kernels][norm]") {
  for (k::Isa isa : kt::runnable_isas("layer_norm"))
  for (std::size_t n : {std::size_t{1}, std::size_t{15}, std::size_t{16}, std::size_t{33}, std::size_t{768}}) {
    CAPTURE(k::isa_name(isa), n);
    const auto vx = kt::random_vec(n, -2.0f, 2.0f, static_cast<std::uint32_t>(900 + n));
    const kt::Guarded x(n, vx), g(n, kt::random_vec(n, 0.5f, 1.5f, 901)), b(n, kt::random_vec(n, -1.0f, 1.0f, 902));
    kt::Guarded y(n), inplace(n, vx);
    k::layer_norm(x.data(), y.data(), g.data(), b.data(), n, 1e-5f, isa);
    k::layer_norm(inplace.data(), inplace.data(), g.data(), b.data(), n, 1e-5f, isa);
    for (std::size_t i = 0; i < n; ++i) CHECK(inplace[i] == y[i]);
    kt::Guarded ys(n), inplace_s(n, vx);
    k::layer_norm_scalar(x.data(), ys.data(), g.data(), b.data(), n, 1e-5f);
    k::layer_norm_scalar(inplace_s.data(), inplace_s.data(), g.data(), b.data(), n, 1e-5f);
    for (std::size_t i = 0; i < n; ++i) CHECK(inplace_s[i] == ys[i]);
  }
}

TEST_CASE("kernels/layer_norm: constant row gives beta (variance 0, eps keeps it finite)", "[kernels][norm]") {
  const std::size_t n = 16 + 3;
  const kt::Guarded x(n, std::vector<float>(n, 3.25f)), b(n, kt::random_vec(n, -1.0f, 1.0f, 950));
  for (k::Isa isa : kt::runnable_isas("layer_norm")) {
    kt::Guarded y(n);
    k::layer_norm(x.data(), y.data(), nullptr, b.data(), n, 1e-5f, isa);
    for (std::size_t i = 0; i < n; ++i) CHECK(y[i] == b[i]);
  }  // the sum of equal dyadic values and sum / n are exact here
}

TEST_CASE("kernels/rms_norm: matches scalar twin and double at every tail length", "[kernels][norm]") {
  const float eps = 1e-5f;
  for (k::Isa isa : kt::runnable_isas("rms_norm"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    const auto vx = kt::random_vec(n, -3.0f, 3.0f, static_cast<std::uint32_t>(1100 + n));
    const auto vg = kt::random_vec(n, 0.5f, 1.5f, static_cast<std::uint32_t>(1200 + n));
    const kt::Guarded x(n, vx), g(n, vg);
    double ss = 0.0;
    for (float v : vx) ss += static_cast<double>(v) * v;
    const double scale = n == 0 ? 0.0 : 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    for (bool has_g : {true, false}) {
      CAPTURE(has_g);
      kt::Guarded y(n), ys(n), inplace(n, vx);
      k::rms_norm(x.data(), y.data(), has_g ? g.data() : nullptr, n, eps, isa);
      k::rms_norm_scalar(x.data(), ys.data(), has_g ? g.data() : nullptr, n, eps);
      k::rms_norm(inplace.data(), inplace.data(), has_g ? g.data() : nullptr, n, eps, isa);
      for (std::size_t i = 0; i < n; ++i) {
        const double ref = vx[i] * scale * (has_g ? vg[i] : 1.0f);
        // Σx² has only positive terms (no cancellation): the relative error of every output is the
        // accumulation factor plus a few roundings.
        const double tol = accum_factor(n) * std::fabs(ref) + 1e-30;
        CHECK(std::fabs(y[i] - ref) <= tol);
        CHECK(std::fabs(ys[i] - ref) <= tol);
        CHECK(std::fabs(y[i] - ys[i]) <= 2.0 * tol);
        CHECK(inplace[i] == y[i]);
      }
    }
  }
}
