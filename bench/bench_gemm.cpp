// GEMM: polyformer's single entry point kernels::gemm, both paths — BM_gemm_entry, B as stored (OpenBLAS
// sgemm single-threaded per call, split over polyformer's own threads), and BM_gemm_packed, B packed ahead of
// time as linear layers keep their weights (polyformer's micro-kernels) — against a plain Eigen product,
// C (m, n) = A (m, k) · Bᵀ with B (n, k) in the nn.Linear layout. Shapes: 1024³, 128×768×768 and
// 512×768×768 (BERT-base projections at 128 and 512 tokens) and 512×768→3072 (the FFN up-projection). Ceilings: shared/MACHINE.md (≈ 100 / 196 GFLOP/s for sgemm).
//
//   bench_gemm --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "counters.hpp"
#include "memory.hpp"
#include "polyformer/kernels/gemm.hpp"

namespace pf = polyformer;

namespace {

struct Operands {
  pf::Matrix a, b, c;  // a (m, k), b (n, k), c (m, n)
  Operands(pf::Index m, pf::Index n, pf::Index k)
      : a(pf::Matrix::Random(m, k)), b(pf::Matrix::Random(n, k)), c(pf::Matrix::Zero(m, n)) {}
};

double gemm_flops(const benchmark::State& state) {
  return 2.0 * static_cast<double>(state.range(0)) * static_cast<double>(state.range(1)) *
         static_cast<double>(state.range(2));
}

void BM_gemm_entry(benchmark::State& state) {
  const pf::Index m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  Operands x(m, n, k);
  const bench::PeakMemory memory;
  pf::kernels::gemm(pf::cview(x.a), pf::cview(x.b), pf::kernels::Transpose::yes, pf::view(x.c), 1.0f, 0.0f,
                    threads);  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    pf::kernels::gemm(pf::cview(x.a), pf::cview(x.b), pf::kernels::Transpose::yes, pf::view(x.c), 1.0f, 0.0f,
                      threads);
    benchmark::DoNotOptimize(x.c.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, gemm_flops(state));
  memory.report(state, pf::kernels::gemm_backend());
}

void BM_gemm_packed(benchmark::State& state) {
  const pf::Index m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  Operands x(m, n, k);
  const auto packed = pf::kernels::PackedMatrix::pack_transposed(x.b.data(), static_cast<std::size_t>(n),
                                                                 static_cast<std::size_t>(k), static_cast<std::size_t>(k));
  const bench::PeakMemory memory;
  pf::kernels::gemm(pf::cview(x.a), packed, pf::view(x.c), nullptr, false, threads);  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    pf::kernels::gemm(pf::cview(x.a), packed, pf::view(x.c), nullptr, false, threads);
    benchmark::DoNotOptimize(x.c.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, gemm_flops(state));
  memory.report(state, "packed B");
}

void BM_gemm_eigen(benchmark::State& state) {
  const pf::Index m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  Operands x(m, n, k);
  const bench::PeakMemory memory;
  Eigen::setNbThreads(threads);
  x.c.noalias() = x.a * x.b.transpose();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    x.c.noalias() = x.a * x.b.transpose();
    benchmark::DoNotOptimize(x.c.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, gemm_flops(state));
  memory.report(state, "eigen " + std::to_string(Eigen::nbThreads()) + " thread(s)");
  Eigen::setNbThreads(1);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k", "threads"});
  for (int threads : {1, 2}) {
    b->Args({1024, 1024, 1024, threads});
    b->Args({128, 768, 768, threads});
    b->Args({512, 768, 768, threads});
    b->Args({512, 3072, 768, threads});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_gemm_entry)->Apply(shapes);
BENCHMARK(BM_gemm_packed)->Apply(shapes);
BENCHMARK(BM_gemm_eigen)->Apply(shapes);

BENCHMARK_MAIN();
