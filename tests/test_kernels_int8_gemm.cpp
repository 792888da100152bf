// int8_gemm (kernels/int8_gemm.hpp) on every path the CPU runs (AVX-512 VNNI, AVX2, portable; chosen at run time,
// so each flavour of this file runs them all): the quantization rule (scales, rounding half to even, clamping, zero rows), the
// packed layout, and products equal to an exact integer reference computed here — from values quantized here,
// summed in int64 — at tails in m, n and k, with and without bias, on 1 and 2 threads, through guarded buffers.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "polyformer/kernels/int8_gemm.hpp"
#include "kernels_testing.hpp"

namespace {

namespace k = polyformer::kernels;
using k::testing::Guarded;
using k::testing::random_vec;

/// The int8 paths this CPU runs; the others are reported as skipped.
std::vector<k::Int8Path> runnable_paths() {
  return k::testing::runnable({k::Int8Path::portable, k::Int8Path::avx2, k::Int8Path::avx512_vnni},
                              k::int8_path_name, "int8_gemm");
}

/// Rows quantized by the rule as the header states it, written here from that statement.
struct Reference {
  std::vector<std::int64_t> q;  // (rows, cols)
  std::vector<float> scale;     // (rows)
};

Reference quantize_reference(const float* x, std::size_t rows, std::size_t cols, std::size_t ld) {
  Reference out{std::vector<std::int64_t>(rows * cols, 0), std::vector<float>(rows, 0.0f)};
  for (std::size_t i = 0; i < rows; ++i) {
    float absmax = 0.0f;
    for (std::size_t j = 0; j < cols; ++j)
      if (std::abs(x[i * ld + j]) > absmax) absmax = std::abs(x[i * ld + j]);
    if (absmax < std::ldexp(1.0f, -120)) continue;  // zero row: scale 0, q 0
    out.scale[i] = absmax / 127.0f;
    const float inverse = 127.0f / absmax;
    for (std::size_t j = 0; j < cols; ++j) {
      const float scaled = x[i * ld + j] * inverse;
      const long r = std::lrint(scaled);  // half to even in the default rounding mode
      out.q[i * cols + j] = r > 127 ? 127 : (r < -127 ? -127 : r);
    }
  }
  return out;
}

/// Runs int8_gemm on x (m, k) (rows ldx apart, the last row ending at a guard page) and w (n, k), C (m, n)
/// with rows ldc apart (guard columns between rows, the last row ending at a guard page), and checks every
/// entry against Σ qx·qw (int64) · sx · sw + bias to 1e-6 of its magnitude.
void check_product(std::size_t m, std::size_t n, std::size_t kk, bool with_bias, int threads, unsigned seed,
                   k::Int8Path path) {
  INFO("path " << k::int8_path_name(path) << " m " << m << " n " << n << " k " << kk << " bias " << with_bias
               << " threads " << threads);
  const std::size_t ldx = kk + 3, ldc = n + 2;
  Guarded x((m - 1) * ldx + kk, random_vec((m - 1) * ldx + kk, -2.0f, 2.0f, seed));
  auto wv = random_vec(n * kk, -0.5f, 0.5f, seed + 1);
  if (n > 2)
    for (std::size_t r = 0; r < kk; ++r) wv[2 * kk + r] = 0.0f;  // an all-zero weight row: scale 0
  if (m > 3)
    for (std::size_t r = 0; r < kk; ++r) x[3 * ldx + r] = 0.0f;  // an all-zero activation row
  Guarded bias(n, random_vec(n, -1.0f, 1.0f, seed + 2));
  const float sentinel = 12345.0f;
  Guarded c((m - 1) * ldc + n, std::vector<float>((m - 1) * ldc + n, sentinel));

  const auto w = k::QuantizedMatrix::quantize(wv.data(), n, kk, kk);
  k::int8_gemm(m, x.data(), ldx, w, with_bias ? bias.data() : nullptr, c.data(), ldc, threads, path);

  const Reference qx = quantize_reference(x.data(), m, kk, ldx), qw = quantize_reference(wv.data(), n, kk, kk);
  double worst = 0.0;
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < ldc && i * ldc + j < c.size(); ++j) {
      const float got = c[i * ldc + j];
      if (j >= n) {  // the columns between rows stay untouched
        REQUIRE(got == sentinel);
        continue;
      }
      std::int64_t sum = 0;
      for (std::size_t r = 0; r < kk; ++r) sum += qx.q[i * kk + r] * qw.q[j * kk + r];
      const double product = double(sum) * double(qx.scale[i]) * double(qw.scale[j]);
      const double b = with_bias ? double(bias[j]) : 0.0;
      const double err = std::abs(double(got) - (product + b)) / (std::abs(product) + std::abs(b) + 1e-30);
      worst = std::max(worst, err);
    }
  CAPTURE(worst);
  CHECK(worst <= 1e-6);
}

}  // namespace

TEST_CASE("kernels/int8_gemm: activation and weight rows follow the quantization rule", "[kernels][int8]") {
  SECTION("rounding half to even, scale max/127") {
    // max 127: the factor is exactly 1, so the row shows the rounding of the ties themselves.
    const std::vector<float> x{127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -127.0f, 3.49f, 0.0f, -3.51f};
    const std::vector<int> expect{127, 0, 2, 2, 0, -2, -2, 126, -127, 3, 0, -4};
    std::vector<std::int8_t> q(x.size());
    float scale = -1.0f;
    k::quantize_rows(1, x.size(), x.data(), x.size(), q.data(), x.size(), &scale);
    CHECK(scale == 1.0f);
    for (std::size_t j = 0; j < x.size(); ++j) {
      INFO("j " << j << " x " << x[j]);
      CHECK(int(q[j]) == expect[j]);
    }
  }
  SECTION("scales and values against the reference rule, random rows") {
    const std::size_t m = 7, kk = 37;
    const auto x = random_vec(m * kk, -3.0f, 5.0f, 11);
    std::vector<std::int8_t> q(m * kk);
    std::vector<float> scales(m);
    k::quantize_rows(m, kk, x.data(), kk, q.data(), kk, scales.data());
    const Reference ref = quantize_reference(x.data(), m, kk, kk);
    for (std::size_t i = 0; i < m; ++i) {
      CHECK(scales[i] == ref.scale[i]);
      for (std::size_t j = 0; j < kk; ++j) REQUIRE(std::int64_t(q[i * kk + j]) == ref.q[i * kk + j]);
    }
  }
  SECTION("clamping and NaN") {
    CHECK(k::quantize_value(300.0f, 1.0f) == 127);
    CHECK(k::quantize_value(-300.0f, 1.0f) == -127);
    CHECK(k::quantize_value(127.49f, 1.0f) == 127);
    CHECK(k::quantize_value(std::numeric_limits<float>::quiet_NaN(), 1.0f) == -127);
  }
  SECTION("zero and vanishing rows get scale 0 and q 0") {
    const std::vector<float> x{0.0f, 0.0f, -0.0f, 1e-38f, -1e-40f, 0.0f};  // rows of 3
    std::vector<std::int8_t> q(6, 99);
    std::vector<float> scales(2, -1.0f);
    k::quantize_rows(2, 3, x.data(), 3, q.data(), 3, scales.data());
    CHECK(scales[0] == 0.0f);
    CHECK(scales[1] == 0.0f);
    for (auto v : q) CHECK(v == 0);
    CHECK(k::row_quantization(0.0f).inverse == 0.0f);
    CHECK(k::row_quantization(254.0f).scale == 2.0f);
    CHECK(k::row_quantization(254.0f).inverse == 0.5f);
  }
}

TEST_CASE("kernels/int8_gemm: the weight is quantized per output row and packed [k/4][16 columns][k%4]",
          "[kernels][int8]") {
  constexpr std::size_t W = k::QuantizedMatrix::panel_width;
  const std::size_t n = W + 3, kk = 5, ldw = kk + 2;
  auto wv = random_vec(n * ldw, -1.0f, 1.0f, 3);
  for (std::size_t r = 0; r < kk; ++r) wv[4 * ldw + r] = 0.0f;  // zero row 4
  const auto w = k::QuantizedMatrix::quantize(wv.data(), n, kk, ldw);
  REQUIRE(w.rows() == kk);
  REQUIRE(w.cols() == n);
  REQUIRE(w.steps() == 2);
  REQUIRE(w.panels() == 2);
  REQUIRE(w.size() == 2 * 2 * 64);
  const Reference ref = quantize_reference(wv.data(), n, kk, ldw);
  for (std::size_t j = 0; j < 2 * W; ++j) {
    INFO("column " << j);
    const std::int8_t* panel = w.panel(j / W);
    std::int64_t sum = 0;
    for (std::size_t r = 0; r < 8; ++r) {  // k padded to 8 with zeros; columns past n are zero
      const std::int8_t stored = panel[(r / 4) * 64 + (j % W) * 4 + r % 4];
      const std::int64_t expect = (j < n && r < kk) ? ref.q[j * kk + r] : 0;
      REQUIRE(std::int64_t(stored) == expect);
      if (r < kk && j < n) REQUIRE(std::int64_t(w.at(j, r)) == expect);
      sum += expect;
    }
    CHECK(w.scales()[j] == (j < n ? ref.scale[j] : 0.0f));
    CHECK(std::int64_t(w.column_sums()[j]) == sum);
  }
  CHECK(w.scales()[4] == 0.0f);
  std::vector<float> deq(n * kk);
  w.dequantize(deq.data(), kk);
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t r = 0; r < kk; ++r) {
      CHECK(deq[j * kk + r] == float(w.at(j, r)) * w.scales()[j]);
      CHECK(std::abs(deq[j * kk + r] - wv[j * ldw + r]) <= 0.5f * w.scales()[j] * 1.0001f);
    }
}

TEST_CASE("kernels/int8_gemm: equals the exact integer product at every tail", "[kernels][int8]") {
  for (k::Int8Path path : runnable_paths()) {
    unsigned seed = 100;
    for (std::size_t kk : {1u, 3u, 4u, 5u, 17u, 64u, 130u})
      for (std::size_t m : {1u, 2u, 3u, 5u, 7u, 8u, 9u, 13u, 17u})
        for (std::size_t n : {1u, 5u, 15u, 16u, 17u, 31u, 33u, 47u, 48u, 49u, 64u, 65u, 100u})
          for (bool bias : {false, true}) check_product(m, n, kk, bias, 1, seed++, path);
    for (std::size_t m : {1u, 4u, 9u, 33u})
      for (std::size_t n : {1u, 17u, 49u, 64u, 65u}) check_product(m, n, 768, m % 2 == 1, 1, seed++, path);
  }
}

TEST_CASE("kernels/int8_gemm: thread splits (panels, rows, row blocks) give the serial result", "[kernels][int8]") {
  // All above 1 MFLOP, so the second thread is used: panel splits, a row split (one panel), a GEMV, several
  // L2 row blocks.
  for (k::Int8Path path : runnable_paths())
  for (auto [m, n, kk] : {std::tuple<std::size_t, std::size_t, std::size_t>{33, 100, 768}, {300, 16, 130},
                          {5, 700, 200}, {1, 1000, 768}, {1, 2049, 257}, {700, 40, 768}, {129, 257, 96}})
    for (bool bias : {false, true}) {
      check_product(m, n, kk, bias, 2, unsigned(m + n + kk), path);
      INFO("path " << k::int8_path_name(path) << " m " << m << " n " << n << " k " << kk);
      const auto x = random_vec(m * kk, -1.0f, 1.0f, 5), wv = random_vec(n * kk, -1.0f, 1.0f, 6);
      const auto b = random_vec(n, -1.0f, 1.0f, 7);
      const auto w = k::QuantizedMatrix::quantize(wv.data(), n, kk, kk);
      std::vector<float> one(m * n), two(m * n), twin(m * n);
      k::int8_gemm(m, x.data(), kk, w, bias ? b.data() : nullptr, one.data(), n, 1, path);
      k::int8_gemm(m, x.data(), kk, w, bias ? b.data() : nullptr, two.data(), n, 2, path);
      k::int8_gemm_scalar(m, x.data(), kk, w, bias ? b.data() : nullptr, twin.data(), n);
      CHECK(one == two);  // integer sums, the same float epilogue per entry: bitwise equal
      double worst = 0.0, largest = 0.0;  // the twin rounds its epilogue in another order: float-level agreement
      for (std::size_t i = 0; i < m * n; ++i) {
        worst = std::max(worst, double(std::abs(one[i] - twin[i])));
        largest = std::max(largest, double(std::abs(twin[i])));
      }
      CAPTURE(worst, largest);
      CHECK(worst <= 1e-6 * largest);
    }
}

TEST_CASE("kernels/int8_gemm: the kernel quantizes activations by the rule (ties, tails)", "[kernels][int8]") {
  // W = 127·I: qw = 127 on the diagonal with scale 1, so C[i, j] = qx[i, j] · 127 · sx[i] shows the kernel's own
  // quantization of every activation, ties and tails included.
  for (k::Int8Path path : runnable_paths())
  for (std::size_t kk : {1u, 7u, 16u, 31u, 37u, 64u, 100u}) {
    INFO("path " << k::int8_path_name(path) << " k " << kk);
    std::vector<float> wv(kk * kk, 0.0f);
    for (std::size_t j = 0; j < kk; ++j) wv[j * kk + j] = 127.0f;
    const auto w = k::QuantizedMatrix::quantize(wv.data(), kk, kk, kk);
    const std::size_t m = 3;
    std::vector<float> x(m * kk);
    for (std::size_t j = 0; j < kk; ++j) {
      x[j] = j == 0 ? 127.0f : float(int(j % 9) - 4) + 0.5f;  // max 127: factor 1, ties ±0.5, ±1.5, ...
      x[kk + j] = j == 0 ? -254.0f : float(int(j % 11) - 5);  // factor 0.5: odd values are ties
      x[2 * kk + j] = 0.001f * float(j + 1) * (j % 2 ? -1.0f : 1.0f);
    }
    std::vector<float> c(m * kk);
    k::int8_gemm(m, x.data(), kk, w, nullptr, c.data(), kk, 1, path);
    const Reference ref = quantize_reference(x.data(), m, kk, kk);
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = 0; j < kk; ++j) {
        INFO("i " << i << " j " << j << " x " << x[i * kk + j]);
        const double q = double(c[i * kk + j]) / (127.0 * double(ref.scale[i]));
        REQUIRE(std::abs(q - double(ref.q[i * kk + j])) < 1e-4);
      }
  }
}

TEST_CASE("kernels/int8_gemm: sums beyond 2^24 and near the int32 limit stay exact", "[kernels][int8]") {
  // All ones: qx = qw = 127, so every entry is 127² · k (·1/127 · 1/127 = k). At k = 70000 the VNNI path's
  // shifted sums (255 · 127 · k) wrap int32 before the column-sum correction: still exact modulo 2³².
  for (k::Int8Path path : runnable_paths())
  for (std::size_t kk : {4099u, 70000u}) {
    INFO("path " << k::int8_path_name(path) << " k " << kk);
    const std::size_t m = 2, n = 17;
    const std::vector<float> x(m * kk, 1.0f), wv(n * kk, 1.0f);
    const auto w = k::QuantizedMatrix::quantize(wv.data(), n, kk, kk);
    std::vector<float> c(m * n);
    k::int8_gemm(m, x.data(), kk, w, nullptr, c.data(), n, 1, path);
    const double exact = 127.0 * 127.0 * double(kk) * (1.0 / 127.0) * (1.0 / 127.0);
    for (float v : c) CHECK(std::abs(double(v) - exact) <= 1e-6 * exact);
  }
}

TEST_CASE("kernels/int8_gemm: empty products", "[kernels][int8]") {
  for (k::Int8Path path : runnable_paths()) {
    INFO("path " << k::int8_path_name(path));
    const std::vector<float> wv(3 * 4, 1.0f), bias{1.0f, 2.0f, 3.0f};
    const auto w = k::QuantizedMatrix::quantize(wv.data(), 3, 4, 4);
    std::vector<float> c(3, -1.0f);
    k::int8_gemm(0, nullptr, 4, w, bias.data(), c.data(), 3, 1, path);  // m = 0: nothing written
    CHECK(c == std::vector<float>{-1.0f, -1.0f, -1.0f});
    const auto w0 = k::QuantizedMatrix::quantize(nullptr, 3, 0, 0);  // k = 0: C = bias
    k::int8_gemm(1, nullptr, 0, w0, bias.data(), c.data(), 3, 1, path);
    CHECK(c == bias);
  }
}
