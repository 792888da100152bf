// gemm_nt (C = A·Bᵀ by register-blocked dot products) against the scalar twin and a float64 product, over every
// row count 1..9, column counts around its blocks of four, depths with and without a vector tail, and strides
// wider than the operands (the guard values past each row must never be read into the result).

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels_testing.hpp"
#include "polyformer/kernels/gemm_nt.hpp"

namespace pk = polyformer::kernels;
namespace pkt = polyformer::kernels::testing;

TEST_CASE("kernels/gemm_nt: equals the scalar twin and float64 at every tail", "[kernels][gemm]") {
  for (pk::Isa isa : pkt::runnable_isas("gemm_nt"))
  for (std::size_t k : {1u, 7u, 16u, 64u, 100u})
    for (std::size_t m = 1; m <= 9; ++m)
      for (std::size_t n : {1u, 3u, 4u, 5u, 9u, 17u}) {
        INFO(pk::isa_name(isa) << " m " << m << " n " << n << " k " << k);
        const std::size_t lda = k + 3, ldb = k + 5, ldc = n + 2;
        std::vector<float> a = pkt::random_vec(m * lda, -1.0f, 1.0f, 11), b = pkt::random_vec(n * ldb, -1.0f, 1.0f, 12);
        for (std::size_t i = 0; i < m; ++i) a[i * lda + k] = 1e30f;  // guards past each row
        for (std::size_t j = 0; j < n; ++j) b[j * ldb + k] = 1e30f;
        std::vector<float> c(m * ldc, -7.0f), twin(m * ldc, -7.0f);
        pk::gemm_nt(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc, isa);
        pk::gemm_nt_scalar(m, n, k, a.data(), lda, b.data(), ldb, twin.data(), ldc);
        double worst = 0, worst_twin = 0;
        for (std::size_t i = 0; i < m; ++i) {
          for (std::size_t j = 0; j < n; ++j) {
            double ref = 0, scale = 0;
            for (std::size_t r = 0; r < k; ++r) {
              ref += double(a[i * lda + r]) * double(b[j * ldb + r]);
              scale += std::abs(double(a[i * lda + r]) * double(b[j * ldb + r]));
            }
            worst = std::max(worst, std::abs(c[i * ldc + j] - ref) / scale);
            worst_twin = std::max(worst_twin, std::abs(twin[i * ldc + j] - ref) / scale);
          }
          for (std::size_t j = n; j < ldc; ++j) CHECK(c[i * ldc + j] == -7.0f);  // nothing written past n
        }
        CHECK(worst < 1e-6);
        CHECK(worst_twin < 1e-6);
      }
}
