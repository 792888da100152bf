// small_gemm micro-kernels of every family the CPU runs (AVX-512, AVX2, the build's own) against the scalar twin
// and a float64 product, over every row remainder (1..2·MR+1), every column tail (1..4·16+1: each narrower
// block of the widest tile), several depths, strided operands, and accumulate on/off.

#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "polyformer/kernels/small_gemm.hpp"
#include "kernels_testing.hpp"

namespace {

std::vector<float> random_vector(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace

TEST_CASE("kernels/small_gemm: equals the scalar twin and float64 at every tail", "[kernels][gemm]") {
  for (polyformer::kernels::Isa isa : polyformer::kernels::testing::runnable_isas("small_gemm"))
  for (std::size_t k : {0u, 1u, 7u, 64u})
    for (std::size_t m = 1; m <= 13; ++m)
      for (std::size_t n = 1; n <= 4 * 16 + 1; ++n)
        for (bool accumulate : {false, true}) {
          INFO("kernels " << polyformer::kernels::isa_name(isa) << " m " << m << " n " << n << " k " << k
                          << " accumulate " << accumulate);
          // Strides wider than the operands, with guard values past every row end.
          const std::size_t lda = k + 3, ldb = n + 5, ldc = n + 2;
          const unsigned seed = static_cast<unsigned>(m * 1000 + n * 10 + k);
          const auto a = random_vector(m * lda, seed), b = random_vector(std::max<std::size_t>(k, 1) * ldb, seed + 1);
          auto c = random_vector(m * ldc, seed + 2);
          const auto c_old = c;
          auto c_ref = c;
          const float alpha = 0.75f;
          polyformer::kernels::small_gemm(m, n, k, alpha, a.data(), lda, b.data(), ldb, accumulate, c.data(), ldc,
                                          isa);
          polyformer::kernels::small_gemm_scalar(m, n, k, alpha, a.data(), lda, b.data(), ldb, accumulate,
                                                 c_ref.data(), ldc);
          double worst = 0.0, worst_f64 = 0.0;
          for (std::size_t i = 0; i < m; ++i)
            for (std::size_t j = 0; j < ldc; ++j) {
              const std::size_t idx = i * ldc + j;
              if (j >= n) {  // untouched padding
                REQUIRE(c[idx] == c_ref[idx]);
                continue;
              }
              double exact = 0.0;
              for (std::size_t p = 0; p < k; ++p) exact += double(a[i * lda + p]) * double(b[p * ldb + j]);
              exact = alpha * exact + (accumulate ? double(c_old[idx]) : 0.0);
              worst = std::max(worst, double(std::abs(c[idx] - c_ref[idx])));
              worst_f64 = std::max(worst_f64, std::abs(double(c[idx]) - exact));
            }
          // Sums of up to 64 products of magnitude <= 1: float rounding stays well under 1e-5.
          CHECK(worst < 1e-5);
          CHECK(worst_f64 < 1e-5);
        }
}
