// Peer of bench_attention.cpp: softmax(QKᵀ/√d)·V for 12 heads × 64 at n tokens in libtorch 1.13, on
// q, k, v (1, 12, n, 64). BM_libtorch_attention_sdpa calls at::_scaled_dot_product_attention (on the CPU
// in 1.13 its math path: matmul, softmax, matmul, with the n×n scores materialized);
// BM_libtorch_attention_matmul spells the same out. Thread settings as in libtorch_encoder_layer.cpp.
//
//   OPENBLAS_NUM_THREADS=1 libtorch_attention --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "counters.hpp"
#include "memory.hpp"

#ifdef POLYFORMER_PEER_HAS_OPENBLAS
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

constexpr int64_t n_heads = 12, head_dim = 64;

void set_threads(int threads) {
  torch::set_num_threads(threads);
#ifdef POLYFORMER_PEER_HAS_OPENBLAS
  openblas_set_num_threads(threads);
#endif
}

template <typename Attention>
void run(benchmark::State& state, Attention&& attention, const char* what) {
  const int64_t n = state.range(0);
  set_threads(static_cast<int>(state.range(1)));
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  const torch::Tensor q = torch::randn({1, n_heads, n, head_dim}), k = torch::randn({1, n_heads, n, head_dim}),
                      v = torch::randn({1, n_heads, n, head_dim});
  const bench::PeakMemory memory;
  torch::Tensor out;
  if (n < 4096) out = attention(q, k, v);  // warm-up where an iteration is short
  const bench::LoopClock clock;
  for (auto _ : state) {
    out = attention(q, k, v);
    benchmark::DoNotOptimize(out.data_ptr());
    benchmark::ClobberMemory();
  }
  const double nd = static_cast<double>(n);
  clock.report(state, 4.0 * nd * nd * static_cast<double>(head_dim * n_heads));
  memory.report(state, std::string(what) + ", " + std::to_string(at::get_num_threads()) + " thread(s)");
}

void BM_libtorch_attention_sdpa(benchmark::State& state) {
  run(state, [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
    return std::get<0>(at::_scaled_dot_product_attention(q, k, v));
  }, "_scaled_dot_product_attention");
}

void BM_libtorch_attention_matmul(benchmark::State& state) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  run(state, [scale](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
    return torch::softmax(torch::matmul(q, k.transpose(-2, -1)) * scale, -1).matmul(v);
  }, "matmul+softmax");
}

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2})
    for (int n : {1024, 2048}) b->Args({n, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
// n = 4096 takes 1–2 s per call and ≈ 2.5 GB: one iteration.
void large_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2}) b->Args({4096, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
}

}  // namespace

BENCHMARK(BM_libtorch_attention_sdpa)->Apply(sizes);
BENCHMARK(BM_libtorch_attention_sdpa)->Apply(large_sizes);
BENCHMARK(BM_libtorch_attention_matmul)->Apply(sizes);
BENCHMARK(BM_libtorch_attention_matmul)->Apply(large_sizes);

BENCHMARK_MAIN();
