#include "polyformer/kernels/reduce.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels_testing.hpp"

namespace k = polyformer::kernels;
namespace kt = polyformer::kernels::testing;

TEST_CASE("kernels/reduce_max: exact at every tail length, -inf when empty", "[kernels][reduce]") {
  for (k::Isa isa : kt::runnable_isas("reduce_max"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    auto v = kt::random_vec(n, -100.0f, -1.0f, static_cast<std::uint32_t>(80 + n));
    // Put the maximum in the tail, then in the body: both paths must see it.
    for (std::size_t pos : {n - 1, n / 2}) {
      if (n == 0) break;
      auto w = v;
      w[pos] = -0.5f;
      const kt::Guarded x(n, w);
      // max is exact: no tolerance.
      CHECK(k::reduce_max(x.data(), n, isa) == -0.5f);
      CHECK(k::reduce_max_scalar(x.data(), n) == -0.5f);
    }
    const kt::Guarded x(n, v);
    const float ref = n == 0 ? -std::numeric_limits<float>::infinity() : *std::max_element(v.begin(), v.end());
    CHECK(k::reduce_max(x.data(), n, isa) == ref);
    CHECK(k::reduce_max_scalar(x.data(), n) == ref);
  }
}

TEST_CASE("kernels/reduce_max: all -inf stays -inf", "[kernels][reduce]") {
  const std::size_t n = kt::lanes + 3;
  const kt::Guarded x(n, std::vector<float>(n, -std::numeric_limits<float>::infinity()));
  for (k::Isa isa : kt::runnable_isas("reduce_max"))
    CHECK(k::reduce_max(x.data(), n, isa) == -std::numeric_limits<float>::infinity());
}

TEST_CASE("kernels/reduce_sum: matches scalar twin and double at every tail length", "[kernels][reduce]") {
  for (k::Isa isa : kt::runnable_isas("reduce_sum"))
  for (std::size_t n : kt::lengths()) {
    CAPTURE(k::isa_name(isa), n);
    const auto v = kt::random_vec(n, -1.0f, 3.0f, static_cast<std::uint32_t>(90 + n));
    const kt::Guarded x(n, v);
    double ref = 0.0, mag = 0.0;
    for (float f : v) {
      ref += f;
      mag += std::fabs(f);
    }
    // Any summation order: |error| ≤ (n - 1)·u·Σ|x_i| (Higham §4.2).
    const double tol = static_cast<double>(n) * kt::u * mag;
    const float s = k::reduce_sum(x.data(), n, isa);
    const float ss = k::reduce_sum_scalar(x.data(), n);
    CHECK(std::fabs(s - ref) <= tol);
    CHECK(std::fabs(ss - ref) <= tol);
    CHECK(std::fabs(s - ss) <= 2.0 * tol);
    if (n == 0) CHECK(s == 0.0f);
  }
}
