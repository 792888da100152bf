// GEMM: polyformer's single entry point kernels::gemm, both paths — BM_gemm_entry, B as stored (packed on the
// fly per call, split over polyformer's own threads), and BM_gemm_packed, B packed ahead of time as linear layers
// keep their weights (polyformer's micro-kernels, chosen at run time for the CPU) — against its peers in the same
// process: BM_gemm_eigen (a plain Eigen product) and BM_gemm_openblas (one cblas_sgemm call on OpenBLAS's own
// threads, when libopenblas-dev is installed); oneDNN's matmul is bench/peers/dnnl_gemm.cpp (its own process:
// OpenMP). C (m, n) = A (m, k) · Bᵀ with B (n, k) in the nn.Linear layout. Shapes: 1024³, 128×768×768 and
// 512×768×768 (BERT-base projections at 128 and 512 tokens) and 512×768→3072 (the FFN up-projection).
// Then the linear policies side by side, BM_linear_dense (fp32, packed), BM_linear_bf16 (bf16 weights,
// kernels/bf16_gemm.hpp) and BM_linear_int8 (int8 weights and activations, kernels/int8_gemm.hpp), with bias:
// x (512, 768) · Wᵀ, W (768, 768), and the decode products m = 1 (GEMV) against W (768, 768), (2048, 768) and
// (32000, 768) (a vocabulary classifier: 98 MB in fp32, beyond a 32 MiB L3; 49 MB in bf16, 24.6 MB in int8).
// weight_GB/s is the weight's stored bytes (4, 2 or 1 a parameter) per second. BM_linear_lora /
// BM_linear_lora_merged: LoRA<Dense> with one adapter (r = 8) on the 512×768×768 layer, unmerged (x·Aᵀ then
// ·(s·B)ᵀ added) and merged into W (the Dense product alone).
//
//   bench_gemm --benchmark_filter='threads:1/'
//   bench_gemm --benchmark_filter='linear'

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cmath>
#include <string>

#include "main.hpp"
#ifdef POLYFORMER_BENCH_HAS_OPENBLAS
#include <cblas.h>
#endif
#include "counters.hpp"
#include "gemm_shapes.hpp"
#include "memory.hpp"
#include "polyformer/kernels/gemm.hpp"
#include "polyformer/kernels/int8_gemm.hpp"
#include "polyformer/linear/bf16.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/linear/int8.hpp"
#include "polyformer/linear/lora.hpp"

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

#ifdef POLYFORMER_BENCH_HAS_OPENBLAS
/// OpenBLAS sgemm as a user would call it: one call, OpenBLAS's own threads.
void BM_gemm_openblas(benchmark::State& state) {
  const pf::Index m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  Operands x(m, n, k);
  const bench::PeakMemory memory;
  openblas_set_num_threads(threads);
  const auto call = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(n),
                static_cast<blasint>(k), 1.0f, x.a.data(), static_cast<blasint>(k), x.b.data(), static_cast<blasint>(k),
                0.0f, x.c.data(), static_cast<blasint>(n));
  };
  call();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    call();
    benchmark::DoNotOptimize(x.c.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, gemm_flops(state));
  memory.report(state, "openblas " + std::to_string(threads) + " thread(s)");
  openblas_set_num_threads(1);
}
#endif

/// One linear policy's forward on x (m, in) with W (out, in) and a bias; ranges m, out, in, threads.
template <typename Policy>
void linear_forward(benchmark::State& state, const Policy& layer, double weight_bytes, const std::string& label) {
  const pf::Index m = state.range(0), n = state.range(1), k = state.range(2);
  const pf::Context ctx{static_cast<int>(state.range(3))};
  const pf::Matrix x = pf::Matrix::Random(m, k);
  pf::Matrix y = pf::Matrix::Zero(m, n);
  const bench::PeakMemory memory;
  layer.forward(pf::cview(x), pf::view(y), ctx);  // warm-up (and the int8 workspace)
  const bench::LoopClock clock;
  for (auto _ : state) {
    layer.forward(pf::cview(x), pf::view(y), ctx);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, gemm_flops(state));
  const double ms = state.counters["ms"];  // per iteration, from the clock
  if (ms > 0) state.counters["weight_GB/s"] = benchmark::Counter(weight_bytes / (ms * 1e-3) * 1e-9);
  memory.report(state, label);
}

pf::Dense random_dense(pf::Index n, pf::Index k) {
  return pf::Dense(pf::Matrix::Random(n, k) * (1.0f / std::sqrt(static_cast<float>(k))), pf::Vector::Random(n));
}

void BM_linear_dense(benchmark::State& state) {
  const pf::Dense layer = random_dense(state.range(1), state.range(2));
  linear_forward(state, layer, 4.0 * static_cast<double>(layer.weight().size()), "fp32 packed");
}

void BM_linear_bf16(benchmark::State& state) {
  const pf::BF16 layer = pf::BF16::from_dense(random_dense(state.range(1), state.range(2)));
  linear_forward(state, layer, static_cast<double>(layer.packed_weight().bytes()),
                 std::string("bf16 ") + pf::kernels::bf16_path_name(pf::kernels::bf16_path()));
}

void BM_linear_int8(benchmark::State& state) {
  const pf::Int8 layer = pf::Int8::from_dense(random_dense(state.range(1), state.range(2)));
  linear_forward(state, layer, static_cast<double>(layer.quantized_weight().size()),
                 std::string("int8 ") + pf::kernels::int8_gemm_path());
}

/// LoRA (r = 8, α = 16) around the same Dense: unmerged (two extra thin products) and merged (folded into W).
void lora_forward(benchmark::State& state, bool merged) {
  const pf::Index n = state.range(1), k = state.range(2);
  pf::LoRA<pf::Dense> layer(random_dense(n, k));
  layer.add_adapter("bench", pf::Matrix::Random(8, k) * 0.1f, pf::Matrix::Random(n, 8) * 0.1f, 16.0f / 8.0f);
  layer.set_active("bench");
  if (merged) layer.merge();
  linear_forward(state, layer, 4.0 * static_cast<double>(n * k), merged ? "LoRA r=8 merged" : "LoRA r=8 unmerged");
}

void BM_linear_lora(benchmark::State& state) { lora_forward(state, false); }
void BM_linear_lora_merged(benchmark::State& state) { lora_forward(state, true); }

void linear_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k", "threads"});
  for (int threads : {1, 2}) {
    b->Args({512, 768, 768, threads});
    b->Args({1, 768, 768, threads});
    b->Args({1, 2048, 768, threads});
    b->Args({1, 32000, 768, threads});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

void lora_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k", "threads"});
  for (int threads : {1, 2}) b->Args({512, 768, 768, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_gemm_entry)->Apply(bench::gemm_shapes);
BENCHMARK(BM_gemm_packed)->Apply(bench::gemm_shapes);
BENCHMARK(BM_gemm_eigen)->Apply(bench::gemm_shapes);
#ifdef POLYFORMER_BENCH_HAS_OPENBLAS
BENCHMARK(BM_gemm_openblas)->Apply(bench::gemm_shapes);
#endif
BENCHMARK(BM_linear_dense)->Apply(linear_shapes);
BENCHMARK(BM_linear_bf16)->Apply(linear_shapes);
BENCHMARK(BM_linear_int8)->Apply(linear_shapes);
BENCHMARK(BM_linear_lora)->Apply(lora_shapes);
BENCHMARK(BM_linear_lora_merged)->Apply(lora_shapes);

POLYFORMER_BENCHMARK_MAIN()
