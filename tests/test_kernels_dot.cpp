#include "polyformer/kernels/dot.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>

#include "kernels_testing.hpp"

namespace k = polyformer::kernels;
namespace kt = polyformer::kernels::testing;

TEST_CASE("kernels/dot: matches scalar twin and double at every tail length", "[kernels][dot]") {
  for (k::Isa isa : kt::runnable_isas("level-1 kernels"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    const auto va = kt::random_vec(n, -2.0f, 2.0f, static_cast<std::uint32_t>(10 + n));
    const auto vb = kt::random_vec(n, -2.0f, 2.0f, static_cast<std::uint32_t>(20 + n));
    const kt::Guarded a(n, va), b(n, vb);
    double ref = 0.0, mag = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      ref += static_cast<double>(va[i]) * vb[i];
      mag += std::fabs(static_cast<double>(va[i]) * vb[i]);
    }
    // Higham, "Accuracy and Stability of Numerical Algorithms" §3.1: any summation order of a float
    // dot product errs by at most γ_n·Σ|a_i·b_i| with γ_n ≈ n·u (plus one rounding per product).
    const double tol = (static_cast<double>(n) + 1.0) * kt::u * mag;
    const float d = k::dot(a.data(), b.data(), n, isa);
    const float ds = k::dot_scalar(a.data(), b.data(), n);
    CHECK(std::fabs(d - ref) <= tol);
    CHECK(std::fabs(ds - ref) <= tol);
    CHECK(std::fabs(d - ds) <= 2.0 * tol);
    if (n == 0) CHECK(d == 0.0f);
  }
}

TEST_CASE("kernels/axpy: matches scalar twin and double at every tail length", "[kernels][dot]") {
  const float alpha = -0.37f;
  for (k::Isa isa : kt::runnable_isas("level-1 kernels"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    const auto vx = kt::random_vec(n, -3.0f, 3.0f, static_cast<std::uint32_t>(30 + n));
    const auto vy = kt::random_vec(n, -3.0f, 3.0f, static_cast<std::uint32_t>(40 + n));
    const kt::Guarded x(n, vx);
    kt::Guarded y(n, vy), ys(n, vy);
    k::axpy(alpha, x.data(), y.data(), n, isa);
    k::axpy_scalar(alpha, x.data(), ys.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      const double ref = vy[i] + static_cast<double>(alpha) * vx[i];
      // Fused: one rounding; unfused: the product and the sum round, ≤ u·(|α·x| + |y + α·x|).
      const double tol = 2.0 * kt::u * (std::fabs(static_cast<double>(alpha) * vx[i]) + std::fabs(ref));
      CHECK(std::fabs(y[i] - ref) <= tol);
      CHECK(std::fabs(ys[i] - ref) <= tol);
    }
  }
}

TEST_CASE("kernels/scale and add: exact against double at every tail length", "[kernels][dot]") {
  for (k::Isa isa : kt::runnable_isas("level-1 kernels"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    const auto vx = kt::random_vec(n, -3.0f, 3.0f, static_cast<std::uint32_t>(50 + n));
    const auto vy = kt::random_vec(n, -3.0f, 3.0f, static_cast<std::uint32_t>(60 + n));
    // One IEEE operation per element: the result is the correctly rounded double result, bit for bit.
    kt::Guarded s(n, vx), ss(n, vx);
    k::scale(s.data(), 1.7f, n, isa);
    k::scale_scalar(ss.data(), 1.7f, n);
    const kt::Guarded x(n, vx);
    kt::Guarded y(n, vy), ys(n, vy);
    k::add(x.data(), y.data(), n, isa);
    k::add_scalar(x.data(), ys.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      CHECK(s[i] == static_cast<float>(static_cast<double>(vx[i]) * 1.7f));
      CHECK(ss[i] == s[i]);
      CHECK(y[i] == static_cast<float>(static_cast<double>(vy[i]) + vx[i]));
      CHECK(ys[i] == y[i]);
    }
  }
}

TEST_CASE("kernels/add: in place doubling (x == y)", "[kernels][dot]") {
  const std::size_t n = 2 * 16 + 1;
  const auto v = kt::random_vec(n, -3.0f, 3.0f, 70);
  for (k::Isa isa : kt::runnable_isas("add")) {
    CAPTURE(k::isa_name(isa));
    kt::Guarded y(n, v);
    k::add(y.data(), y.data(), n, isa);
    for (std::size_t i = 0; i < n; ++i) CHECK(y[i] == 2.0f * v[i]);
  }
}
