// packed_gemm (weights packed ahead of time) against its scalar twin and a float64 product, at every row
// remainder (1..2·MR+1), every column tail (1..2·panel_width+1), several depths, strided operands, with and
// without bias and accumulate; and the gemm entry point's thread splits against the serial result.

#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/packed_gemm.hpp"
#include "kernels_testing.hpp"

namespace {

using polyformer::kernels::testing::random_vec;

namespace k = polyformer::kernels;


}  // namespace

TEST_CASE("kernels/packed_gemm: packing stores Wᵀ panel by panel, zero-padded", "[kernels][gemm]") {
  constexpr std::size_t NR = k::PackedMatrix::panel_width;
  const std::size_t n = NR + 3, kk = 5, ldw = kk + 2;
  const auto w = random_vec(n * ldw, -1.0f, 1.0f, 1);
  const auto p = k::PackedMatrix::pack_transposed(w.data(), n, kk, ldw);
  REQUIRE(p.rows() == kk);
  REQUIRE(p.cols() == n);
  REQUIRE(p.panels() == 2);
  for (std::size_t r = 0; r < kk; ++r)
    for (std::size_t j = 0; j < n; ++j) REQUIRE(p.at(r, j) == w[j * ldw + r]);
  // The last panel holds 3 columns in one vector's width, zero-padded; it is stored right after the first.
  constexpr std::size_t W = k::PackedMatrix::vector_width;
  REQUIRE(p.panel_cols(0) == NR);
  REQUIRE(p.panel_cols(1) == W);
  REQUIRE(p.size() == (NR + W) * kk);
  for (std::size_t r = 0; r < kk; ++r) {
    for (std::size_t j = 0; j < 3; ++j) REQUIRE(p.panel(1)[r * W + j] == w[(NR + j) * ldw + r]);
    for (std::size_t j = 3; j < W; ++j) REQUIRE(p.panel(1)[r * W + j] == 0.0f);
  }
}

TEST_CASE("kernels/packed_gemm: equals the scalar twin and float64 at every tail", "[kernels][gemm]") {
  constexpr std::size_t NR = k::PackedMatrix::panel_width;
  constexpr std::size_t MR = static_cast<std::size_t>(k::PackedTile<xsimd::default_arch>::rows);
  for (std::size_t kk : {1u, 7u, 64u})
    for (std::size_t m = 1; m <= 2 * MR + 1; ++m)
      for (std::size_t n = 1; n <= 2 * NR + 1; n += (n < NR + 2 ? 1 : 5))
        for (int flags = 0; flags < 4; ++flags) {
          const bool accumulate = flags & 1, with_bias = flags & 2;
          INFO("m " << m << " n " << n << " k " << kk << " accumulate " << accumulate << " bias " << with_bias);
          const std::size_t lda = kk + 3, ldw = kk + 1, ldc = n + 2;  // guard columns past every row end
          const unsigned seed = static_cast<unsigned>(m * 1000 + n * 10 + kk);
          const auto a = random_vec(m * lda, -1.0f, 1.0f, seed), w = random_vec(n * ldw, -1.0f, 1.0f, seed + 1);
          const auto bias = random_vec(n, -1.0f, 1.0f, seed + 3);
          auto c = random_vec(m * ldc, -1.0f, 1.0f, seed + 2);
          const auto c_old = c;
          auto c_ref = c;
          const auto b = k::PackedMatrix::pack_transposed(w.data(), n, kk, ldw);
          k::packed_gemm(m, a.data(), lda, b, 0, b.panels(), with_bias ? bias.data() : nullptr, accumulate, c.data(),
                         ldc);
          k::packed_gemm_scalar(m, a.data(), lda, b, with_bias ? bias.data() : nullptr, accumulate, c_ref.data(), ldc);
          double worst = 0.0, worst_f64 = 0.0;
          for (std::size_t i = 0; i < m; ++i)
            for (std::size_t j = 0; j < ldc; ++j) {
              const std::size_t idx = i * ldc + j;
              if (j >= n) {  // guard columns untouched
                REQUIRE(c[idx] == c_old[idx]);
                continue;
              }
              double exact = with_bias ? double(bias[j]) : 0.0;
              for (std::size_t p = 0; p < kk; ++p) exact += double(a[i * lda + p]) * double(w[j * ldw + p]);
              if (accumulate) exact += double(c_old[idx]);
              worst = std::max(worst, double(std::abs(c[idx] - c_ref[idx])));
              worst_f64 = std::max(worst_f64, std::abs(double(c[idx]) - exact));
            }
          CHECK(worst < 1e-5);
          CHECK(worst_f64 < 1e-5);
        }
}

TEST_CASE("kernels/gemm: packed entry point splits over threads without changing the result", "[kernels][gemm]") {
  using polyformer::Index;
  using polyformer::Matrix;
  for (auto [m, n, kk] : {std::tuple<Index, Index, Index>{3, 700, 200}, {300, 40, 130}, {129, 257, 96}}) {
    INFO("m " << m << " n " << n << " k " << kk);
    const Matrix a = Matrix::Random(m, kk), w = Matrix::Random(n, kk);
    const Matrix bias = Matrix::Random(1, n);
    const auto b = k::PackedMatrix::pack_transposed(w.data(), std::size_t(n), std::size_t(kk), std::size_t(kk));
    Matrix one(m, n), two(m, n);
    k::gemm(polyformer::cview(a), b, polyformer::view(one), bias.data(), false, 1);
    k::gemm(polyformer::cview(a), b, polyformer::view(two), bias.data(), false, 2);
    CHECK(one == two);  // same kernels on the same blocks: bitwise equal
    const Eigen::MatrixXd expect = (a.cast<double>() * w.cast<double>().transpose()).rowwise() + bias.cast<double>().row(0);
    CHECK((one.cast<double>() - expect).cwiseAbs().maxCoeff() < 1e-4);
  }
}
