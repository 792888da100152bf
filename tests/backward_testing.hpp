#pragma once
// Helpers of the backward tests: float ↔ float64 conversions for the oracle (backward_oracle.hpp), the
// relative-error check every gradient must pass, and random parameters.

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

#include "backward_oracle.hpp"
#include "polyformer/core/tensor.hpp"
#include "support.hpp"

namespace bwt {

namespace pf = polyformer;
using backward_oracle::MatD;
using backward_oracle::VecD;
using pf::Index;

inline MatD f64(const pf::Matrix& m) { return m.cast<double>(); }
inline VecD f64(const pf::Vector& v) { return v.cast<double>(); }
inline pf::Vector random_vector(Index n, unsigned seed, float scale = 1.0f) {
  return pft::random_matrix(n, 1, seed, scale).col(0);
}

/// ‖got − want‖ / max(‖want‖, floor), Frobenius.
template <typename Got>
double relative_error(const Got& got, const MatD& want, double floor = 1e-30) {
  const MatD g = got.template cast<double>();
  REQUIRE(g.rows() == want.rows());
  REQUIRE(g.cols() == want.cols());
  return (g - want).norm() / std::max(want.norm(), floor);
}
template <typename Got>
double relative_error(const Got& got, const VecD& want, double floor = 1e-30) {
  const VecD g = got.template cast<double>();
  REQUIRE(g.size() == want.size());
  return (g - want).norm() / std::max(want.norm(), floor);
}

/// The bound for every gradient against the float64 oracle.
inline constexpr double tolerance = 1e-4;

#define BWT_CHECK_GRAD(got, want, ...)                                  \
  do {                                                                   \
    const double err_ = ::bwt::relative_error((got), (want), ##__VA_ARGS__); \
    INFO(#got << ": relative error " << err_);                          \
    CHECK(err_ <= ::bwt::tolerance);                                     \
  } while (0)

}  // namespace bwt
