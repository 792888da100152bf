// Position policies against independent formulations: RoPE as complex rotation in float64, the two
// pairing conventions as permutations of each other, sinusoidal values known by hand.

#include <catch2/catch.hpp>

#include <cmath>
#include <complex>

#include "polyformer/layers/position.hpp"
#include "polyformer/layers/rotary.hpp"
#include "support.hpp"

namespace pf = polyformer;
using pf::Index;
using pf::Matrix;

TEST_CASE("layers/rotary: interleaved RoPE equals multiplying pairs by e^{i·pos·θ_k} in float64", "[layers][rope]") {
  const Index heads = 3, dh = 10, n = 9, first = 5;
  Matrix x = pft::random_matrix(n, heads * dh, 3);
  const Matrix original = x;
  pf::RoPE<pf::RotaryStyle::interleaved>().apply(x.data(), n, heads * dh, heads, dh, first);
  double worst = 0;
  for (Index r = 0; r < n; ++r)
    for (Index h = 0; h < heads; ++h)
      for (Index k = 0; k < dh / 2; ++k) {
        const double theta = std::pow(10000.0, -2.0 * double(k) / double(dh));
        const std::complex<double> z(original(r, h * dh + 2 * k), original(r, h * dh + 2 * k + 1));
        const std::complex<double> rotated = z * std::polar(1.0, double(first + r) * theta);
        worst = std::max({worst, std::abs(rotated.real() - x(r, h * dh + 2 * k)),
                          std::abs(rotated.imag() - x(r, h * dh + 2 * k + 1))});
      }
  CHECK(worst < 2e-5);  // float angles at positions < 16: a few ulp of the angle
}

TEST_CASE("layers/rotary: half-split RoPE is interleaved RoPE under the pairing permutation", "[layers][rope]") {
  const Index dh = 8, n = 6;
  const Matrix x = pft::random_matrix(n, dh, 4);
  // Interleaved layout (a0, b0, a1, b1, ...) ↔ half-split layout (a0, a1, ..., b0, b1, ...).
  Matrix inter(n, dh), half(n, dh);
  for (Index r = 0; r < n; ++r)
    for (Index k = 0; k < dh / 2; ++k) {
      inter(r, 2 * k) = half(r, k) = x(r, k);
      inter(r, 2 * k + 1) = half(r, k + dh / 2) = x(r, k + dh / 2);
    }
  pf::RoPE<pf::RotaryStyle::interleaved>().apply(inter.data(), n, dh, 1, dh, 0);
  pf::RoPE<pf::RotaryStyle::half_split>().apply(half.data(), n, dh, 1, dh, 0);
  for (Index r = 0; r < n; ++r)
    for (Index k = 0; k < dh / 2; ++k) {
      CHECK(inter(r, 2 * k) == Approx(half(r, k)).margin(1e-6));  // FMA contraction may differ by an ulp
      CHECK(inter(r, 2 * k + 1) == Approx(half(r, k + dh / 2)).margin(1e-6));
    }
}

TEST_CASE("layers/rotary: scores depend only on relative position", "[layers][rope]") {
  const Index dh = 16;
  const Matrix q = pft::random_matrix(1, dh, 5), k = pft::random_matrix(1, dh, 6);
  auto score = [&](Index pq, Index pk) {
    Matrix a = q, b = k;
    pf::RoPE<pf::RotaryStyle::half_split> rope;
    rope.apply(a.data(), 1, dh, 1, dh, pq);
    rope.apply(b.data(), 1, dh, 1, dh, pk);
    return double(a.row(0).dot(b.row(0)));
  };
  CHECK(score(3, 1) == Approx(score(10, 8)).epsilon(1e-5));
  CHECK(score(0, 0) == Approx(double(q.row(0).dot(k.row(0)))).epsilon(1e-6));
}

TEST_CASE("layers/position: sinusoidal values and learned table", "[layers][position]") {
  pf::SinusoidalPosition sin_pos;
  Matrix x = Matrix::Zero(2 * 3, 4);  // batch 2 × 3 positions
  sin_pos.add(pf::view(x), 2);
  // PE(pos, 0) = sin(pos), PE(pos, 1) = cos(pos), PE(pos, 2) = sin(pos/100), PE(pos, 3) = cos(pos/100).
  for (Index b = 0; b < 2; ++b)
    for (Index p = 0; p < 3; ++p) {
      CHECK(x(b * 3 + p, 0) == Approx(std::sin(double(p))));
      CHECK(x(b * 3 + p, 1) == Approx(std::cos(double(p))));
      CHECK(x(b * 3 + p, 2) == Approx(std::sin(double(p) / 100.0)));
      CHECK(x(b * 3 + p, 3) == Approx(std::cos(double(p) / 100.0)));
    }
  pf::LearnedPosition learned(pft::random_matrix(4, 3, 7));
  Matrix y = Matrix::Zero(2, 3);
  learned.add(pf::view(y), 1, 2);
  CHECK(y.row(0) == learned.table().row(2));
  CHECK(y.row(1) == learned.table().row(3));
  Matrix too_long = Matrix::Zero(3, 3);
  CHECK_THROWS_AS(learned.add(pf::view(too_long), 1, 2), pf::shape_error);
}
