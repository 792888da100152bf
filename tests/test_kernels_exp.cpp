#include "polyformer/kernels/exp.hpp"

#include <catch2/catch.hpp>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels_testing.hpp"

namespace k = polyformer::kernels;
namespace kt = polyformer::kernels::testing;

namespace {
constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();

// Tolerance: the Cephes polynomial with exact Cody–Waite reduction stays within 1 ulp of the
// correctly rounded result (≈ 1.01 ulp measured exhaustively over [-87, 88] with FMA); without FMA
// (SSE2) Horner's extra roundings add a fraction of an ulp. 2 ulp is the documented bound.
constexpr double max_ulp = 2.0;
}  // namespace

TEST_CASE("kernels/exp: matches scalar twin and double exp at every tail length", "[kernels][exp]") {
  for (std::size_t n : kt::lengths()) {
    CAPTURE(n);
    const auto in = kt::random_vec(n, -87.0f, 88.0f, static_cast<std::uint32_t>(1000 + n));
    kt::Guarded x(n, in), y(n), ys(n);
    k::exp(x.data(), y.data(), n);
    k::exp_scalar(x.data(), ys.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      const double ref = std::exp(static_cast<double>(in[i]));
      CHECK(kt::ulp_error(y[i], ref) <= max_ulp);
      CHECK(kt::ulp_error(ys[i], ref) <= max_ulp);
      // Same algorithm; only FMA contraction may differ, so the twins agree to well within 2 ulp.
      CHECK(kt::ulp_error(y[i], ys[i]) <= max_ulp);
    }
  }
}

TEST_CASE("kernels/exp: in place (x == y)", "[kernels][exp]") {
  const std::size_t n = 2 * kt::lanes + 3;
  const auto in = kt::random_vec(n, -20.0f, 20.0f, 7);
  kt::Guarded x(n, in), y(n);
  k::exp(x.data(), y.data(), n);
  k::exp(x.data(), x.data(), n);
  for (std::size_t i = 0; i < n; ++i) CHECK(x[i] == y[i]);
}

TEST_CASE("kernels/exp: strided sweep of all floats in [-87, 88] within 2 ulp", "[kernels][exp]") {
  // Every 997th float bit pattern (≈ 2.2 M points, both signs); the full sweep is in the bench notes.
  std::vector<float> xs;
  for (std::uint32_t b = 0; b <= std::bit_cast<std::uint32_t>(88.0f); b += 997) xs.push_back(std::bit_cast<float>(b));
  for (std::uint32_t b = 0; b <= std::bit_cast<std::uint32_t>(87.0f); b += 997) xs.push_back(-std::bit_cast<float>(b));
  std::vector<float> ys(xs.size());
  k::exp(xs.data(), ys.data(), xs.size());
  double worst = 0.0;
  float worst_x = 0.0f;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double e = kt::ulp_error(ys[i], std::exp(static_cast<double>(xs[i])));
    if (e > worst) {
      worst = e;
      worst_x = xs[i];
    }
  }
  INFO("worst " << worst << " ulp at x = " << worst_x);
  CHECK(worst <= max_ulp);
}

TEST_CASE("kernels/exp: special values", "[kernels][exp]") {
  const std::vector<float> in = {-inf, inf,   qnan,     -100.0f, 88.5f,  88.7f, 88.72283f, 88.7229f, 89.0f,
                                 1e30f, -1e30f, -87.3f, -87.4f,  -95.0f, -103.0f, -104.0f, -110.0f,
                                 0.0f,  -0.0f,  1.0f,   -1.0f,   1e-30f, -1e-30f};
  const std::size_t n = in.size();
  kt::Guarded x(n, in), y(n), ys(n);
  k::exp(x.data(), y.data(), n);
  k::exp_scalar(x.data(), ys.data(), n);
  for (const kt::Guarded* out : {&y, &ys}) {
    const auto& r = *out;
    CHECK(r[0] == 0.0f);  // -inf → 0
    CHECK(r[1] == inf);   // +inf → +inf
    CHECK(std::isnan(r[2]));
    CHECK(r[8] == inf);   // 89 overflows
    CHECK(r[9] == inf);
    CHECK(r[10] == 0.0f);
    CHECK(r[16] == 0.0f);  // e^-110 < 2^-149
    CHECK(r[17] == 1.0f);
    CHECK(r[18] == 1.0f);
    // Finite results (normal and subnormal, including e^-100 and e^88.5) within 2 ulp of double;
    // the subnormal ones are rounded once, in the final scaling.
    for (std::size_t i : {3u, 4u, 5u, 6u, 7u, 11u, 12u, 13u, 14u, 15u, 19u, 20u, 21u, 22u}) {
      CAPTURE(in[i]);
      CHECK(kt::ulp_error(r[i], std::exp(static_cast<double>(in[i]))) <= max_ulp);
    }
  }
}

TEST_CASE("kernels/exp: exp_batch on special lanes", "[kernels][exp]") {
  using B = k::batch_f<xsimd::default_arch>;
  alignas(64) float in[B::size], out[B::size];
  const float specials[] = {-inf, inf, qnan, -100.0f, 88.5f, 0.0f, -87.5f, 88.0f};
  for (std::size_t i = 0; i < B::size; ++i) in[i] = specials[i % 8];
  k::exp_batch(B::load_aligned(in)).store_aligned(out);
  for (std::size_t i = 0; i < B::size; ++i) {
    CAPTURE(in[i]);
    if (std::isnan(in[i]))
      CHECK(std::isnan(out[i]));
    else
      CHECK(kt::ulp_error(out[i], std::exp(static_cast<double>(in[i]))) <= max_ulp);
  }
}

TEST_CASE("kernels/exp: every run-time family's exp (exp_shifted_sum, shift 0) within 2 ulp, specials exact",
          "[kernels][exp]") {
  // x − 0 is x, so the row comes back as e^x: a strided sweep of [-87, 88] and the special values.
  std::vector<float> in = {-inf, inf, qnan, 89.0f, 1e30f, -1e30f, -110.0f, 0.0f, -0.0f};
  const std::size_t specials = in.size();
  for (std::uint32_t b = 0; b <= std::bit_cast<std::uint32_t>(88.0f); b += 9973) in.push_back(std::bit_cast<float>(b));
  for (std::uint32_t b = 0; b <= std::bit_cast<std::uint32_t>(87.0f); b += 9973) in.push_back(-std::bit_cast<float>(b));
  for (float x : {-100.0f, 88.5f, 88.7f, 88.72283f, -87.3f, -95.0f, -103.0f, -104.0f}) in.push_back(x);
  for (k::Isa isa : kt::runnable_isas("exp_shifted_sum")) {
    INFO("kernels " << k::isa_name(isa));
    kt::Guarded y(in.size(), in);
    k::exp_shifted_sum(y.data(), in.size(), 0.0f, isa);
    CHECK(y[0] == 0.0f);
    CHECK(y[1] == inf);
    CHECK(std::isnan(y[2]));
    CHECK((y[3] == inf && y[4] == inf));
    CHECK((y[5] == 0.0f && y[6] == 0.0f));
    CHECK((y[7] == 1.0f && y[8] == 1.0f));
    double worst = 0.0;
    float worst_x = 0.0f;
    for (std::size_t i = specials; i < in.size(); ++i) {
      const double e = kt::ulp_error(y[i], std::exp(static_cast<double>(in[i])));
      if (e > worst) {
        worst = e;
        worst_x = in[i];
      }
    }
    INFO("worst " << worst << " ulp at x = " << worst_x);
    CHECK(worst <= max_ulp);
  }
}

TEST_CASE("kernels/exp: exp_shifted_sum matches scalar twin and double", "[kernels][exp]") {
  for (k::Isa isa : kt::runnable_isas("exp_shifted_sum"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    auto in = kt::random_vec(n, -30.0f, 10.0f, static_cast<std::uint32_t>(2000 + n));
    for (std::size_t i = 0; i < n; i += 5) in[i] = -inf;  // masked entries must give exactly 0
    const float shift = 10.0f;
    kt::Guarded x(n, in), xs(n, in);
    const float sum = k::exp_shifted_sum(x.data(), n, shift, isa);
    const float sum_s = k::exp_shifted_sum_scalar(xs.data(), n, shift);
    double ref_sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const double ref = std::exp(static_cast<double>(in[i]) - shift);
      ref_sum += ref;
      if (in[i] == -inf) {
        CHECK(x[i] == 0.0f);
        CHECK(xs[i] == 0.0f);
        continue;
      }
      // x - shift rounds to float first (≤ 0.5 ulp of an argument ≤ 40 in magnitude, i.e. ≤ 40·2^-24
      // relative after exp), then ≤ 2 ulp from exp itself.
      const double tol = (2.0 + 40.0) * kt::u * 2.0 * ref;
      CHECK(std::fabs(x[i] - ref) <= tol);
      CHECK(std::fabs(xs[i] - ref) <= tol);
    }
    // Sum of n positive terms each within the bound above, plus float accumulation (≤ n·u relative).
    const double tol_sum = (84.0 + static_cast<double>(n)) * kt::u * ref_sum;
    CHECK(std::fabs(sum - ref_sum) <= tol_sum);
    CHECK(std::fabs(sum_s - ref_sum) <= tol_sum);
    CHECK(std::fabs(sum - sum_s) <= 2.0 * tol_sum);
  }
}
