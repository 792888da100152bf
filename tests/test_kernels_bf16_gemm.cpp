// bf16 GEMM: the rounding to bf16 against a nearest-value search written here, the packed layout, and the
// product on every path this CPU runs (the others named as skipped) against a float64 product of the same
// bf16-rounded operands, at row, column and depth tails, depth blocks and both thread splits.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels_testing.hpp"
#include "polyformer/kernels/bf16_gemm.hpp"

namespace k = polyformer::kernels;
using polyformer::kernels::testing::random_vec;

namespace {

float bits_to_float(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

/// The bf16 nearest to a finite x, ties to the even bit pattern, found by comparing the two bf16 neighbours in
/// double (the one at or below |x| and the next one up).
std::uint16_t nearest_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  const std::uint32_t below = u & 0xffff0000u, above = below + 0x10000u;
  const double d_below = std::abs(double(x) - double(bits_to_float(below)));
  // Past the largest bf16 the next step up is infinity, which rounding treats as the value 2^128.
  const double v_above = (above & 0x7fffffffu) == 0x7f800000u ? std::copysign(std::ldexp(1.0, 128), double(x))
                                                              : double(bits_to_float(above));
  const double d_above = std::abs(double(x) - v_above);
  if (d_below < d_above) return static_cast<std::uint16_t>(below >> 16);
  if (d_above < d_below) return static_cast<std::uint16_t>(above >> 16);
  return static_cast<std::uint16_t>(((below >> 16) & 1u) == 0 ? below >> 16 : above >> 16);
}

std::vector<k::Bf16Path> runnable_paths() {
  auto out = k::testing::runnable({k::Bf16Path::portable, k::Bf16Path::avx512_bf16}, k::bf16_path_name, "bf16_gemm");
  if (k::cpu().amx_bf16) WARN("bf16_gemm: this CPU has AMX-BF16, for which no kernel is written yet: not tested");
  else WARN("bf16_gemm: skipped AMX-BF16 (this CPU lacks it, and no kernel is written for it yet)");
  return out;
}

}  // namespace

TEST_CASE("kernels/bf16: rounding to nearest even, NaN and infinity", "[kernels][bf16]") {
  std::vector<float> xs = random_vec(4000, -3.0f, 3.0f, 5);
  for (float scale : {1e-30f, 1e-3f, 7.0f, 1e30f})
    for (float x : random_vec(500, -1.0f, 1.0f, 6)) xs.push_back(x * scale);
  // Exact ties: a bf16 value plus half a step, with an even and with an odd last bit.
  for (std::uint32_t base : {0x3f800000u, 0x3f810000u, 0xbf820000u, 0x00810000u}) xs.push_back(bits_to_float(base | 0x8000u));
  xs.push_back(0.0f);
  xs.push_back(-0.0f);
  xs.push_back(1e-40f);  // subnormal
  for (float x : xs) {
    INFO("x " << x);
    REQUIRE(k::to_bf16(x) == nearest_bf16(x));
  }
  CHECK(k::to_bf16(std::numeric_limits<float>::infinity()) == 0x7f80);
  CHECK(k::to_bf16(-std::numeric_limits<float>::infinity()) == 0xff80);
  CHECK(k::to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // past the largest bf16's half step: overflows
  CHECK(std::isnan(k::from_bf16(k::to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(std::isnan(k::from_bf16(k::to_bf16(bits_to_float(0x7f800001u)))));  // a NaN whose payload sits in the low bits
  CHECK(k::from_bf16(0x3f80) == 1.0f);
  CHECK(k::from_bf16(0xc040) == -3.0f);
}

TEST_CASE("kernels/bf16: packing keeps Wᵀ in pairs, zero-padded, from floats or from bf16 bytes", "[kernels][bf16]") {
  const std::size_t n = 53, kk = 7, ldw = 9;
  const auto w = random_vec(n * ldw, -2.0f, 2.0f, 11);
  const auto p = k::Bf16Matrix::pack_transposed(w.data(), n, kk, ldw);
  REQUIRE(p.rows() == kk);
  REQUIRE(p.cols() == n);
  REQUIRE(p.pairs() == 4);
  REQUIRE(p.panels() == 2);
  REQUIRE(p.panel_cols(1) == 16);
  REQUIRE(p.bytes() == (48 + 16) * 4 * 2 * 2);
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t r = 0; r < kk; ++r) REQUIRE(p.bits(r, j) == nearest_bf16(w[j * ldw + r]));
  // The padding: depth row 7 of every column and columns 53..63 of the last panel are zero.
  for (std::size_t j = 0; j < 48; ++j) REQUIRE(p.panel(0)[3 * 48 * 2 + j * 2 + 1] == 0);
  for (std::size_t q = 0; q < 4; ++q)
    for (std::size_t j = 5; j < 16; ++j) REQUIRE((p.panel(1)[q * 32 + j * 2] | p.panel(1)[q * 32 + j * 2 + 1]) == 0);
  // The same weight given as little-endian bf16 bytes, at an odd address.
  std::vector<std::byte> bytes(1 + n * ldw * 2);
  for (std::size_t i = 0; i < n * ldw; ++i) {
    const std::uint16_t h = k::to_bf16(w[i]);
    bytes[1 + 2 * i] = std::byte(h & 0xff);
    bytes[2 + 2 * i] = std::byte(h >> 8);
  }
  const auto q = k::Bf16Matrix::pack_transposed_bf16(bytes.data() + 1, n, kk, ldw);
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t r = 0; r < kk; ++r) REQUIRE(q.bits(r, j) == p.bits(r, j));
  std::vector<float> back(n * kk);
  p.unpack_transposed(back.data(), kk);
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t r = 0; r < kk; ++r) REQUIRE(back[j * kk + r] == k::from_bf16(nearest_bf16(w[j * ldw + r])));
}

TEST_CASE("kernels/bf16_gemm: equals a float64 product of the bf16 operands on every path", "[kernels][bf16]") {
  struct Shape {
    std::size_t m, n, kk;
  };
  std::vector<Shape> shapes;
  for (std::size_t m = 1; m <= 17; ++m) shapes.push_back({m, 1 + (m * 13) % 100, 1 + (m * 7) % 40});
  shapes.push_back({9, 48, 64});
  shapes.push_back({3, 200, 1101});  // depth blocks, odd depth
  shapes.push_back({40, 330, 768});
  for (k::Bf16Path path : runnable_paths())
    for (const Shape& s : shapes)
      for (bool with_bias : {false, true}) {
        INFO("path " << k::bf16_path_name(path) << " m " << s.m << " n " << s.n << " k " << s.kk << " bias " << with_bias);
        const std::size_t lda = s.kk + 3, ldw = s.kk + 1, ldc = s.n + 2;
        const auto a = random_vec(s.m * lda, -1.0f, 1.0f, unsigned(s.m * 31 + s.n));
        const auto w = random_vec(s.n * ldw, -1.0f, 1.0f, unsigned(s.kk * 17 + 3));
        const auto bias = random_vec(s.n, -1.0f, 1.0f, 99);
        auto c = random_vec(s.m * ldc, -1.0f, 1.0f, 7);
        const auto c_old = c;
        const auto b = k::Bf16Matrix::pack_transposed(w.data(), s.n, s.kk, ldw);
        k::bf16_gemm(s.m, a.data(), lda, b, with_bias ? bias.data() : nullptr, c.data(), ldc, 1, path);
        double worst = 0.0;
        for (std::size_t i = 0; i < s.m; ++i)
          for (std::size_t j = 0; j < ldc; ++j) {
            if (j >= s.n) {
              REQUIRE(c[i * ldc + j] == c_old[i * ldc + j]);
              continue;
            }
            double exact = with_bias ? double(bias[j]) : 0.0, magnitude = std::abs(exact);
            for (std::size_t r = 0; r < s.kk; ++r) {
              const double prod = double(k::from_bf16(nearest_bf16(a[i * lda + r]))) *
                                  double(k::from_bf16(nearest_bf16(w[j * ldw + r])));
              exact += prod;
              magnitude += std::abs(prod);
            }
            // fp32 sums of kk exact products: at most about kk · 2^-24 of the magnitude.
            worst = std::max(worst, std::abs(double(c[i * ldc + j]) - exact) / (magnitude * double(s.kk + 2) * 6e-8));
          }
        CHECK(worst <= 1.0);
      }
}

TEST_CASE("kernels/bf16_gemm: two threads give the one-thread result bit for bit", "[kernels][bf16]") {
  for (k::Bf16Path path : runnable_paths())
    for (auto [m, n, kk] : {std::tuple<std::size_t, std::size_t, std::size_t>{5, 700, 300}, {300, 40, 130}}) {
      INFO("path " << k::bf16_path_name(path) << " m " << m << " n " << n << " k " << kk);
      const auto a = random_vec(m * kk, -1.0f, 1.0f, 1), w = random_vec(n * kk, -1.0f, 1.0f, 2);
      const auto b = k::Bf16Matrix::pack_transposed(w.data(), n, kk, kk);
      std::vector<float> one(m * n), two(m * n);
      k::bf16_gemm(m, a.data(), kk, b, nullptr, one.data(), n, 1, path);
      k::bf16_gemm(m, a.data(), kk, b, nullptr, two.data(), n, 2, path);
      CHECK(one == two);
    }
}

TEST_CASE("kernels/bf16: repack packs B itself and reuses the storage, repack_transposed too", "[kernels][bf16]") {
  k::Bf16Matrix p = k::Bf16Matrix::pack_transposed(random_vec(70 * 40, -2.0f, 2.0f, 5).data(), 70, 40, 40);
  // B (k = 13, n = 21) row-major with rows 25 apart: a smaller shape into the storage of the larger one.
  const std::size_t kk = 13, n = 21, ldb = 25;
  const auto b = random_vec(kk * ldb, -2.0f, 2.0f, 6);
  p.repack(b.data(), kk, n, ldb);
  REQUIRE(p.rows() == kk);
  REQUIRE(p.cols() == n);
  REQUIRE(p.pairs() == 7);
  for (std::size_t r = 0; r < kk; ++r)
    for (std::size_t j = 0; j < n; ++j) REQUIRE(p.bits(r, j) == nearest_bf16(b[r * ldb + j]));
  for (std::size_t j = 0; j < n; ++j) REQUIRE(p.bits(kk, j) == 0);  // the odd depth's padding row, left by no one
  const auto w = random_vec(n * kk, -2.0f, 2.0f, 7);
  p.repack_transposed(w.data(), n, kk, kk);
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t r = 0; r < kk; ++r) REQUIRE(p.bits(r, j) == nearest_bf16(w[j * kk + r]));
}

TEST_CASE("kernels/bf16_gemm_pairs: A converted once gives bf16_gemm's result, and accumulates", "[kernels][bf16]") {
  for (k::Bf16Path path : runnable_paths())
    for (auto [m, n, kk] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 5, 3}, {7, 64, 33}, {19, 100, 256}}) {
      INFO("path " << k::bf16_path_name(path) << " m " << m << " n " << n << " k " << kk);
      const auto a = random_vec(m * kk, -1.0f, 1.0f, 8), w = random_vec(n * kk, -1.0f, 1.0f, 9);
      const auto b = k::Bf16Matrix::pack_transposed(w.data(), n, kk, kk);
      const std::size_t kp = b.pairs();
      std::vector<std::uint32_t> pairs(m * kp);
      for (std::size_t i = 0; i < m; ++i) k::bf16_pairs(a.data() + i * kk, kk, pairs.data() + i * kp, path);
      std::vector<float> want(m * n), got(m * n);
      k::bf16_gemm(m, a.data(), kk, b, nullptr, want.data(), n, 1, path);
      k::bf16_gemm_pairs(m, pairs.data(), kp, b, false, got.data(), n, path);
      CHECK(got == want);
      const auto old = random_vec(m * n, -1.0f, 1.0f, 10);
      std::vector<float> acc = old;
      k::bf16_gemm_pairs(m, pairs.data(), kp, b, true, acc.data(), n, path);
      double worst = 0.0;
      for (std::size_t i = 0; i < m * n; ++i) worst = std::max(worst, std::abs(double(acc[i]) - (double(old[i]) + want[i])));
      CHECK(worst <= 1e-5);
    }
}
