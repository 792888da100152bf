// packed_gemm (weights packed ahead of time) against its scalar twin and a float64 product, for every kernel
// family this CPU runs (the others are named as skipped), at every row remainder (1..2·MR+1), every column tail
// (1..2·panel_width+1), several depths, with the CPU's cache blocking and with small blocks that split depth and
// panels, strided operands, with and without bias and accumulate; and the gemm entry point's thread splits
// against the serial result; the unpacked entry point (micro-kernels, few rows, packed on the fly) against float64.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/packed_gemm.hpp"
#include "kernels_testing.hpp"

namespace {

using polyformer::kernels::testing::random_vec;

namespace k = polyformer::kernels;

std::vector<k::Isa> runnable_isas() { return k::testing::runnable_isas("packed_gemm"); }

}  // namespace

TEST_CASE("kernels/packed_gemm: packing stores Wᵀ panel by panel, zero-padded", "[kernels][gemm]") {
  for (k::Isa isa : runnable_isas()) {
  INFO("kernels " << k::isa_name(isa));
  const std::size_t NR = k::packed_tile(isa).panel_width();
  const std::size_t n = NR + 3, kk = 5, ldw = kk + 2;
  const auto w = random_vec(n * ldw, -1.0f, 1.0f, 1);
  const auto p = k::PackedMatrix::pack_transposed(w.data(), n, kk, ldw, isa);
  REQUIRE(p.isa() == isa);
  REQUIRE(p.panel_width() == NR);
  REQUIRE(p.rows() == kk);
  REQUIRE(p.cols() == n);
  REQUIRE(p.panels() == 2);
  for (std::size_t r = 0; r < kk; ++r)
    for (std::size_t j = 0; j < n; ++j) REQUIRE(p.at(r, j) == w[j * ldw + r]);
  // The last panel holds 3 columns in one vector's width, zero-padded; it is stored right after the first.
  const std::size_t W = p.vector_width();
  REQUIRE(p.panel_cols(0) == NR);
  REQUIRE(p.panel_cols(1) == W);
  REQUIRE(p.size() == (NR + W) * kk);
  for (std::size_t r = 0; r < kk; ++r) {
    for (std::size_t j = 0; j < 3; ++j) REQUIRE(p.panel(1)[r * W + j] == w[(NR + j) * ldw + r]);
    for (std::size_t j = 3; j < W; ++j) REQUIRE(p.panel(1)[r * W + j] == 0.0f);
  }
  }
}

TEST_CASE("kernels/packed_gemm: zeros is every stored float 0 and takes a repack in place", "[kernels][gemm]") {
  for (k::Isa isa : runnable_isas()) {
  INFO("kernels " << k::isa_name(isa));
  const std::size_t NR = k::packed_tile(isa).panel_width();
  const std::size_t n = 2 * NR + 3, kk = 7;  // the last panel: 3 columns in one vector
  auto p = k::PackedMatrix::zeros(kk, n, isa);
  REQUIRE(p.isa() == isa);
  REQUIRE(p.rows() == kk);
  REQUIRE(p.cols() == n);
  REQUIRE(p.size() == (2 * NR + p.vector_width()) * kk);
  for (std::size_t i = 0; i < p.panels(); ++i)
    for (std::size_t f = 0; f < kk * p.panel_cols(i); ++f) REQUIRE(p.panel(i)[f] == 0.0f);
  const float* storage = p.panel(0);
  const auto w = random_vec(n * kk, -1.0f, 1.0f, 2);
  p.repack_transposed(w.data(), n, kk, kk, isa);
  REQUIRE(p.panel(0) == storage);  // the same buffer: no second allocation once the weights arrive
  for (std::size_t r = 0; r < kk; ++r)
    for (std::size_t j = 0; j < n; ++j) REQUIRE(p.at(r, j) == w[j * kk + r]);
  }
}

TEST_CASE("kernels/packed_gemm: gathered columns multiply as the columns they came from", "[kernels][gemm]") {
  for (k::Isa isa : runnable_isas()) {
  INFO("kernels " << k::isa_name(isa));
  const std::size_t NR = k::packed_tile(isa).panel_width();
  const std::size_t kk = 9, na = 2 * NR + 5, nb = NR + 7, m = 3;
  const auto wa = random_vec(na * kk, -1.0f, 1.0f, 3), wb = random_vec(nb * kk, -1.0f, 1.0f, 4);
  const auto a = k::PackedMatrix::pack_transposed(wa.data(), na, kk, kk, isa);
  const auto b = k::PackedMatrix::pack_transposed(wb.data(), nb, kk, kk, isa);
  // Runs that start and end inside panels and cross their boundaries.
  const std::size_t a0 = NR - 3, a1 = 2 * NR + 4, b0 = 1, b1 = nb;
  const auto g = k::PackedMatrix::gather_columns({{&a, a0, a1}, {&b, b0, b1}});
  const std::size_t n = (a1 - a0) + (b1 - b0);
  REQUIRE(g.rows() == kk);
  REQUIRE(g.cols() == n);
  REQUIRE(g.isa() == isa);
  for (std::size_t r = 0; r < kk; ++r) {
    for (std::size_t j = 0; j < a1 - a0; ++j) REQUIRE(g.at(r, j) == a.at(r, a0 + j));
    for (std::size_t j = 0; j < b1 - b0; ++j) REQUIRE(g.at(r, a1 - a0 + j) == b.at(r, b0 + j));
  }
  const std::size_t last = g.panels() - 1;  // the last panel's padding stays zero
  for (std::size_t r = 0; r < kk; ++r)
    for (std::size_t j = n - last * NR; j < g.panel_cols(last); ++j) REQUIRE(g.panel(last)[r * g.panel_cols(last) + j] == 0.0f);
  // One product with the gathered matrix: bit for bit the columns of the two products.
  const auto x = random_vec(m * kk, -1.0f, 1.0f, 5);
  std::vector<float> ya(m * na), yb(m * nb), yg(m * n);
  k::packed_gemm(m, x.data(), kk, a, 0, a.panels(), nullptr, false, ya.data(), na);
  k::packed_gemm(m, x.data(), kk, b, 0, b.panels(), nullptr, false, yb.data(), nb);
  k::packed_gemm(m, x.data(), kk, g, 0, g.panels(), nullptr, false, yg.data(), n);
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < a1 - a0; ++j) REQUIRE(yg[i * n + j] == ya[i * na + a0 + j]);
    for (std::size_t j = 0; j < b1 - b0; ++j) REQUIRE(yg[i * n + a1 - a0 + j] == yb[i * nb + b0 + j]);
  }
  const auto other = k::PackedMatrix::pack_transposed(wb.data(), nb, kk - 1, kk, isa);
  REQUIRE_THROWS_WITH(k::PackedMatrix::gather_columns({{&a, 0, 1}, {&other, 0, 1}}),
                      Catch::Contains("PackedMatrix::gather_columns: a run of columns 0..1 is not within a matrix of 9 rows"));
  REQUIRE_THROWS_WITH(k::PackedMatrix::gather_columns({{&a, 3, na + 1}}), Catch::Contains("columns 3.."));
  }
}

TEST_CASE("kernels/packed_gemm: the CPU's blocking keeps a strip of A in a quarter of L1", "[kernels][gemm]") {
  const k::PackedTile tile{8, 3, 16};
  const k::PackedBlocking small = k::packed_blocking(tile, 32 * 1024, 1024 * 1024);
  CHECK(small.kc == 256);     // 8 rows × 256 floats = 8 KiB
  CHECK(small.panels == 10);  // 256 × 48 floats = 48 KiB a panel, 10 in half of 1 MiB
  const k::PackedBlocking large = k::packed_blocking(tile, 48 * 1024, 2048 * 1024);
  CHECK(large.kc == 384);
  CHECK(large.panels == 14);
  const k::PackedBlocking tiny = k::packed_blocking(tile, 1024, 1024);  // never below 64 deep, one panel
  CHECK(tiny.kc == 64);
  CHECK(tiny.panels == 1);
}

TEST_CASE("kernels/packed_gemm: equals the scalar twin and float64 at every tail", "[kernels][gemm]") {
  for (k::Isa isa : runnable_isas())
  for (const k::PackedBlocking blocking : {k::PackedBlocking{}, k::PackedBlocking{16, 1}, k::PackedBlocking{32, 2}}) {
  INFO("kernels " << k::isa_name(isa) << " blocking kc " << blocking.kc << " panels " << blocking.panels);
  const std::size_t NR = k::packed_tile(isa).panel_width();
  const std::size_t MR = static_cast<std::size_t>(k::packed_tile(isa).rows);
  for (std::size_t kk : {1u, 7u, 64u, 77u})
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
          const auto b = k::PackedMatrix::pack_transposed(w.data(), n, kk, ldw, isa);
          k::packed_gemm(m, a.data(), lda, b, 0, b.panels(), with_bias ? bias.data() : nullptr, accumulate, c.data(),
                         ldc, blocking);
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
          CHECK(worst < 2e-5);
          CHECK(worst_f64 < 2e-5);
        }
  }
}

TEST_CASE("kernels/gemm: packed entry point splits over threads without changing the result", "[kernels][gemm]") {
  using polyformer::Index;
  using polyformer::Matrix;
  for (k::Isa isa : runnable_isas())
  for (auto [m, n, kk] : {std::tuple<Index, Index, Index>{3, 700, 200}, {300, 40, 130}, {129, 257, 96}, {40, 500, 1500}}) {
    INFO("kernels " << k::isa_name(isa) << " m " << m << " n " << n << " k " << kk);
    const Matrix a = Matrix::Random(m, kk), w = Matrix::Random(n, kk);
    const Matrix bias = Matrix::Random(1, n);
    const auto b = k::PackedMatrix::pack_transposed(w.data(), std::size_t(n), std::size_t(kk), std::size_t(kk), isa);
    Matrix one(m, n), two(m, n);
    k::gemm(polyformer::cview(a), b, polyformer::view(one), bias.data(), false, 1);
    k::gemm(polyformer::cview(a), b, polyformer::view(two), bias.data(), false, 2);
    CHECK(one == two);  // same kernels on the same blocks: bitwise equal
    const Eigen::MatrixXd expect = (a.cast<double>() * w.cast<double>().transpose()).rowwise() + bias.cast<double>().row(0);
    CHECK((one.cast<double>() - expect).cwiseAbs().maxCoeff() < 1e-4 * std::sqrt(double(kk) / 100.0) + 1e-4);
  }
}

TEST_CASE("kernels/gemm: the unpacked entry point on each of its paths equals float64", "[kernels][gemm]") {
  using polyformer::Index;
  using polyformer::Matrix;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // (m, n, k): micro-kernels (small, untransposed), few rows (level-1 kernels), packed on the fly; odd tails.
  for (auto [m, n, kk] : {std::tuple<Index, Index, Index>{5, 33, 17}, {1, 300, 1100}, {7, 1000, 65}, {15, 40, 2000},
                          {16, 37, 1030}, {70, 600, 90}, {33, 1500, 300}})
    for (const bool transposed : {false, true})
      for (auto [alpha, beta] : {std::pair<float, float>{1.0f, 0.0f}, {0.5f, 0.0f}, {1.0f, 1.0f}, {-2.0f, 0.25f}})
        for (const int threads : {1, 2}) {
          INFO("m " << m << " n " << n << " k " << kk << " transposed " << transposed << " alpha " << alpha << " beta "
                    << beta << " threads " << threads);
          const Matrix a = Matrix::Random(m, kk);
          const Matrix b = transposed ? Matrix(Matrix::Random(n, kk)) : Matrix(Matrix::Random(kk, n));
          Matrix c = Matrix::Random(m, n);
          if (beta == 0.0f) c(0, 0) = float(nan);  // beta 0 ignores C, NaN included
          const Eigen::MatrixXd bd = transposed ? Eigen::MatrixXd(b.cast<double>().transpose()) : b.cast<double>();
          Eigen::MatrixXd expect = double(alpha) * (a.cast<double>() * bd);
          if (beta != 0.0f) expect += double(beta) * c.cast<double>();
          k::gemm(polyformer::cview(a), polyformer::cview(b), transposed ? k::Transpose::yes : k::Transpose::no,
                  polyformer::view(c), alpha, beta, threads);
          CHECK((c.cast<double>() - expect).cwiseAbs().maxCoeff() < 2e-5 * std::sqrt(double(kk)) * std::abs(alpha) + 1e-5);
        }
}

TEST_CASE("kernels/packed_gemm: weights of 2 MiB or more sit on 2 MiB boundaries, and multiply as any other",
          "[kernels][gemm]") {
  k::WeightAllocator<float> allocator;
  float* small = allocator.allocate(1000);
  CHECK(reinterpret_cast<std::uintptr_t>(small) % 64 == 0);
  allocator.deallocate(small, 1000);
  const std::size_t n_large = (std::size_t(3) << 20) / sizeof(float);  // 3 MiB
  float* large = allocator.allocate(n_large);
  CHECK(reinterpret_cast<std::uintptr_t>(large) % (std::size_t(2) << 20) == 0);
  large[0] = 1.0f;
  large[n_large - 1] = 2.0f;
  CHECK(large[0] + large[n_large - 1] == 3.0f);
  allocator.deallocate(large, n_large);
  // W (n 1100, k 520): 2.2 MB packed, one row of A against float64.
  const std::size_t n = 1100, kk = 520;
  const auto w = random_vec(n * kk, -1.0f, 1.0f, 7), a = random_vec(kk, -1.0f, 1.0f, 8);
  for (k::Isa isa : runnable_isas()) {
    INFO("kernels " << k::isa_name(isa));
    const auto b = k::PackedMatrix::pack_transposed(w.data(), n, kk, kk, isa);
    REQUIRE(b.size() * sizeof(float) >= (std::size_t(2) << 20));
    std::vector<float> c(n);
    k::packed_gemm(1, a.data(), kk, b, 0, b.panels(), nullptr, false, c.data(), n, k::PackedBlocking{});
    double worst = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
      double exact = 0.0;
      for (std::size_t p = 0; p < kk; ++p) exact += double(a[p]) * double(w[j * kk + p]);
      worst = std::max(worst, std::abs(double(c[j]) - exact));
    }
    CHECK(worst < 1e-4);
  }
}
