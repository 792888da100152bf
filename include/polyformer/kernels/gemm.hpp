#pragma once
/// \file The single GEMM entry point. Every matrix product in polyformer goes through `gemm`, so the
/// code path is chosen here, per shape, and benchmarked in bench/bench_gemm.cpp:
/// - products with a weight (linear layers) take the weight pre-packed (packed_gemm.hpp): polyformer's
///   own micro-kernels, chosen at run time for the CPU;
/// - small untransposed products (attention tiles) run on the unpacked micro-kernels (small_gemm.hpp),
///   where packing costs more than it saves;
/// - the rest pack B on the fly into a per-thread buffer and run the same packed kernels (packing n·k floats
///   against m·n·k multiply-adds), or, below 16 rows, where packing does not pay, run as dot products or row
///   updates over B (the level-1 kernels of dot.hpp).
/// No BLAS library is needed; bench_gemm compares these paths with Eigen, OpenBLAS and oneDNN on the machine at hand.

#include <algorithm>

#include "polyformer/core/parallel.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/kernels/dot.hpp"
#include "polyformer/kernels/packed_gemm.hpp"
#include "polyformer/kernels/small_gemm.hpp"

namespace polyformer::kernels {

/// Whether the right-hand operand is used as stored or transposed.
enum class Transpose : bool { no = false, yes = true };

/// Name of the code path for products with an unpacked B ("packed on the fly"; level-1 kernels below 16 rows).
inline const char* gemm_backend() noexcept { return "packed on the fly"; }

/// Makes Eigen run each product on one thread when it was built with OpenMP. polyformer splits its products over
/// its own threads (parallel.hpp), so a backend that starts threads of its own oversubscribes the cores. The
/// library never changes this process-wide setting by itself: a program calls this once at start (polyformer's
/// own programs do).
inline void use_single_threaded_backends() noexcept { Eigen::setNbThreads(1); }

namespace detail {

/// Whether a product is small enough for the micro-kernels: all of B and a strip of A stay in L1/L2.
inline bool use_small_gemm(Index m, Index n, Index k, Transpose tb) noexcept {
  return tb == Transpose::no && k <= 1024 && n <= 512 && static_cast<double>(m) * static_cast<double>(n) <= 65536.0;
}

/// Packs op(B) (k, n) for the packed kernels into `p`, reusing its storage.
inline void pack_operand(ConstMatrixView b, Transpose tb, PackedMatrix& p) {
  const auto u = [](Index x) { return static_cast<std::size_t>(x); };
  if (tb == Transpose::yes) {  // B (n, k) row-major: the nn.Linear layout pack_transposed reads
    p.repack_transposed(b.data(), u(b.rows()), u(b.cols()), u(b.outerStride()));
  } else {  // B (k, n) row-major
    p.repack(b.data(), u(b.rows()), u(b.cols()), u(b.outerStride()));
  }
}

/// A per-thread packing buffer, grow-only.
inline PackedMatrix& packing_buffer() {
  thread_local PackedMatrix buffer;
  return buffer;
}

/// C = alpha·A·op(B) + beta·C for few rows of A, where packing B does not pay: B is read once, each of its rows
/// serving every row of C while in cache — dot products with B's rows (Bᵀ), or row updates along B's rows.
inline void gemm_few_rows(ConstMatrixView a, ConstMatrixView b, Transpose tb, MatrixView c, float alpha, float beta) {
  const Index m = c.rows(), n = c.cols(), k = a.cols();
  const std::size_t uk = static_cast<std::size_t>(k), un = static_cast<std::size_t>(n);
  if (beta == 0.0f) c.setZero();
  else if (beta != 1.0f) c *= beta;
  if (tb == Transpose::yes) {  // c(i, j) += alpha · a_i · b_j
    for (Index j = 0; j < n; ++j) {
      const float* bj = b.data() + j * b.outerStride();
      for (Index i = 0; i < m; ++i) c(i, j) += alpha * dot(a.data() + i * a.outerStride(), bj, uk);
    }
  } else {  // c_i += (alpha · a(i, p)) · b_p
    for (Index p = 0; p < k; ++p) {
      const float* bp = b.data() + p * b.outerStride();
      for (Index i = 0; i < m; ++i) axpy(alpha * a(i, p), bp, c.data() + i * c.outerStride(), un);
    }
  }
}

/// C = alpha·A·op(B) + beta·C on the calling thread.
inline void gemm_serial(ConstMatrixView a, ConstMatrixView b, Transpose tb, MatrixView c, float alpha, float beta) {
  if (c.rows() == 0 || c.cols() == 0) return;
  const auto u = [](Index x) { return static_cast<std::size_t>(x); };
  if (use_small_gemm(c.rows(), c.cols(), a.cols(), tb)) {
    if (beta != 0.0f && beta != 1.0f) c *= beta;
    small_gemm(u(c.rows()), u(c.cols()), u(a.cols()), alpha, a.data(), u(a.outerStride()), b.data(),
               u(b.outerStride()), beta != 0.0f, c.data(), u(c.outerStride()));
    return;
  }
  if (a.cols() == 0) {
    if (beta == 0.0f) c.setZero(); else c *= beta;
    return;
  }
  // Packed on the fly, alpha folded into the packed copy of op(B): C = A·(alpha·op(B)) [+ beta·C].
  if (c.rows() >= 16) {
    PackedMatrix& packed = packing_buffer();
    pack_operand(b, tb, packed);
    if (alpha != 1.0f) packed.scale(alpha);
    if (beta != 0.0f && beta != 1.0f) c *= beta;
    packed_gemm(u(c.rows()), a.data(), u(a.outerStride()), packed, 0, packed.panels(), nullptr, beta != 0.0f, c.data(),
                u(c.outerStride()));
    return;
  }
  gemm_few_rows(a, b, tb, c, alpha, beta);
}

}  // namespace detail

/// C (m, n) = alpha · A (m, k) · op(B) + beta · C, where op(B) is B (k, n) or, with Transpose::yes, Bᵀ for
/// B (n, k) — the nn.Linear layout. Split over `threads` threads by columns of C (rows when C is narrow).
/// Shapes are the caller's contract (checked with POLYFORMER_ASSERT only).
inline void gemm(ConstMatrixView a, ConstMatrixView b, Transpose tb, MatrixView c, float alpha = 1.0f,
                 float beta = 0.0f, int threads = 1) {
  POLYFORMER_ASSERT(a.rows() == c.rows());
  POLYFORMER_ASSERT((tb == Transpose::yes ? b.cols() : b.rows()) == a.cols());
  POLYFORMER_ASSERT((tb == Transpose::yes ? b.rows() : b.cols()) == c.cols());
  const Index m = c.rows(), n = c.cols(), k = a.cols();
  // Below ~1 MFLOP a second thread costs more than it saves.
  const int t = (2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) < 1e6)
                    ? 1 : effective_threads(threads);
  if (t == 1) {
    detail::gemm_serial(a, b, tb, c, alpha, beta);
    return;
  }
  constexpr Index granule = 16;  // a multiple of every SIMD width; keeps column panels aligned
  if (n >= granule * t) {
    const Index panels = (n + granule - 1) / granule;
    parallel_chunks(t, t, [&](Index begin, Index, int) {
      const Index c0 = std::min(n, panels * begin / t * granule);
      const Index c1 = std::min(n, panels * (begin + 1) / t * granule);
      if (c1 <= c0) return;
      const ConstMatrixView bj = tb == Transpose::yes ? block(b, c0, 0, c1 - c0, k) : block(b, 0, c0, k, c1 - c0);
      detail::gemm_serial(a, bj, tb, block(c, 0, c0, m, c1 - c0), alpha, beta);
    });
  } else {
    parallel_chunks(m, t, [&](Index r0, Index r1, int) {
      detail::gemm_serial(block(a, r0, 0, r1 - r0, k), b, tb, block(c, r0, 0, r1 - r0, n), alpha, beta);
    });
  }
}

/// C (m, n) = A (m, k) · B [+ bias (n) on every row] [+ C when `accumulate`], with B (k, n) packed ahead
/// of time (a linear layer's Wᵀ). Split over `threads` threads by column panels (rows when B has too few
/// panels). Shapes are the caller's contract (checked with POLYFORMER_ASSERT only).
inline void gemm(ConstMatrixView a, const PackedMatrix& b, MatrixView c, const float* bias = nullptr,
                 bool accumulate = false, int threads = 1) {
  POLYFORMER_ASSERT(a.rows() == c.rows());
  POLYFORMER_ASSERT(static_cast<std::size_t>(a.cols()) == b.rows());
  POLYFORMER_ASSERT(static_cast<std::size_t>(c.cols()) == b.cols());
  const Index m = c.rows(), n = c.cols(), k = a.cols();
  if (m == 0 || n == 0) return;
  const auto u = [](Index x) { return static_cast<std::size_t>(x); };
  // A shallow product (a LoRA up-projection, k = r) is bound by C's loads and stores: split by rows, so each
  // thread streams whole rows of C (by panels it is 4× slower there, rows revisited once per panel).
  const int t = effective_threads(threads);
  const bool shallow = k < 64 && m >= 8 * t;
  split_packed_product(u(m), b.panels(), 2.0 * double(m) * double(n) * double(k), threads, shallow,
                       [&](std::size_t r0, std::size_t r1, std::size_t p0, std::size_t p1) {
                         packed_gemm(r1 - r0, a.data() + r0 * u(a.outerStride()), u(a.outerStride()), b, p0, p1, bias,
                                     accumulate, c.data() + r0 * u(c.outerStride()), u(c.outerStride()));
                       });
}

}  // namespace polyformer::kernels
