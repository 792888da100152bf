// Full (exact, tiled) attention alone: softmax(QKᵀ/√d)·V for 12 heads × 64 at n tokens, no mask, no
// projections — FullAttention::forward on q, k, v (n, 768). The peer is bench/peers/libtorch_attention.cpp.
// peak_MB shows the tiled policy's O(n·d) memory: a materialized n×n score matrix per head would be
// 12·n²·4 bytes (12 GiB at n = 16384).
//
//   bench_attention --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "main.hpp"
#include "counters.hpp"
#include "memory.hpp"
#include "polyformer/polyformer.hpp"

namespace pf = polyformer;

namespace {

constexpr pf::Index n_heads = 12, head_dim = 64;

void BM_attention(benchmark::State& state) {
  const pf::Index n = state.range(0), width = n_heads * head_dim;
  const pf::Context ctx{static_cast<int>(state.range(1))};
  pf::AttentionShape shape;
  shape.n_heads = shape.n_kv_heads = n_heads;
  shape.head_dim = head_dim;
  shape.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const pf::Matrix q = pf::Matrix::Random(n, width), k = pf::Matrix::Random(n, width), v = pf::Matrix::Random(n, width);
  pf::Matrix out(n, width);
  const pf::AttentionMask mask{};
  const pf::FullAttention attention;
  pf::FullAttention::Workspace ws;  // reused across iterations, as a layer's caller keeps it
  const bench::PeakMemory memory;
  // Warm-up (sizes the tile buffers) only where an iteration is short; the large sizes run once.
  if (n < 8192) attention.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), ws, ctx);
  const bench::LoopClock clock;
  for (auto _ : state) {
    attention.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), ws, ctx);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double nd = static_cast<double>(n);
  clock.report(state, 4.0 * nd * nd * static_cast<double>(head_dim * n_heads));
  memory.report(state);
}

// FullAttention forward + backward (forward_train, then backward from a random dout), the same shapes: the training
// step of the attention alone. Its backward recomputes the score tiles from the saved log-sum-exp, so peak_MB stays
// O(n·d) like the forward's. Target: ≤ 3.5× BM_attention's time at n = 4096.
void BM_attention_train(benchmark::State& state) {
  const pf::Index n = state.range(0), width = n_heads * head_dim;
  const pf::Context ctx{static_cast<int>(state.range(1))};
  const pf::AttentionShape shape{n_heads, n_heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim))};
  const pf::Matrix q = pf::Matrix::Random(n, width), k = pf::Matrix::Random(n, width), v = pf::Matrix::Random(n, width);
  const pf::Matrix dout = pf::Matrix::Random(n, width);
  // Written before the memory counter starts, so peak_MB counts the attention's own buffers.
  pf::Matrix out = pf::Matrix::Zero(n, width), dq = pf::Matrix::Zero(n, width), dk = pf::Matrix::Zero(n, width);
  pf::Matrix dv = pf::Matrix::Zero(n, width);
  const pf::AttentionMask mask{};
  const pf::FullAttention attention;
  pf::FullAttention::Workspace ws;
  pf::FullAttention::Saved saved;
  const bench::PeakMemory memory;
  const auto step = [&] {
    attention.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), saved, ws, ctx);
    attention.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::cview(out), pf::cview(dout), saved,
                       pf::view(dq), pf::view(dk), pf::view(dv), ws, ctx);
  };
  if (n < 8192) step();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(dq.data());
    benchmark::ClobberMemory();
  }
  const double nd = static_cast<double>(n);
  // forward 4n²d, backward 8n²d (recomputed scores, dV, dP, dK, dQ: five n²d products of 2 flops each, less the
  // forward's P·V) — counted as 12n²d in all.
  clock.report(state, 12.0 * nd * nd * static_cast<double>(head_dim * n_heads));
  memory.report(state);
}

// The large sizes take seconds per call (≈ 10 s or more at n = 16384 on one thread): one iteration each.
void small_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2})
    for (int n : {1024, 2048, 4096}) b->Args({n, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
void large_sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2})
    for (int n : {8192, 16384}) b->Args({n, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
}

// Every policy of the registry (AttentionPolicies) at its example spelling, as attention_zoo and generate
// --attention spell it, 12 heads × 64, bidirectional, no mask: the scaling benchmark, BM_policy/<name>.
// Linformer's projections are random (n_max = n).
//   bench_attention --benchmark_filter=BM_policy --benchmark_out=policies.json && bench/policy_table.py policies.json
template <typename Policy>
void BM_policy(benchmark::State& state) {
  const pf::Index n = state.range(0), width = n_heads * head_dim;
  const pf::Context ctx{static_cast<int>(state.range(1))};
  pf::AttentionShape shape{n_heads, n_heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim))};
  const pf::Matrix q = pf::Matrix::Random(n, width), k = pf::Matrix::Random(n, width), v = pf::Matrix::Random(n, width);
  pf::Matrix out(n, width);
  pf::AttentionOptions options;
  options.set("n_max", n);
  const Policy policy = pf::parse_attention_as<Policy>(Policy::example_spelling, options);
  const bench::PeakMemory memory;
  typename Policy::Workspace ws;
  const pf::AttentionMask mask;
  policy.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), ws, ctx);  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    policy.forward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), ws, ctx);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, 0.0);
  memory.report(state);
  state.SetLabel(policy.spelling());
}

// The same with a training step: forward_train + backward (a ParametrizedAttention's weights trainable too),
// BM_policy_train/<name> at n = 4096, for the table's backward column.
template <typename Policy>
void BM_policy_train(benchmark::State& state) {
  const pf::Index n = state.range(0), width = n_heads * head_dim;
  const pf::Context ctx{static_cast<int>(state.range(1))};
  pf::AttentionShape shape{n_heads, n_heads, head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim))};
  const pf::Matrix q = pf::Matrix::Random(n, width), k = pf::Matrix::Random(n, width), v = pf::Matrix::Random(n, width);
  const pf::Matrix dout = pf::Matrix::Random(n, width);
  // Written before the memory counter starts, so peak_MB counts the policy's own buffers, not first-touched outputs.
  pf::Matrix out = pf::Matrix::Zero(n, width), dq = pf::Matrix::Zero(n, width), dk = pf::Matrix::Zero(n, width);
  pf::Matrix dv = pf::Matrix::Zero(n, width);
  pf::AttentionOptions options;
  options.set("n_max", n);
  const Policy policy = pf::parse_attention_as<Policy>(Policy::example_spelling, options);
  const bench::PeakMemory memory;
  typename Policy::Workspace ws;
  typename Policy::Saved saved;
  const pf::AttentionMask mask;
  auto grads = [&] {
    if constexpr (pf::ParametrizedAttention<Policy>) return policy.make_gradients();
    else return 0;
  }();
  const auto step = [&] {
    policy.forward_train(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::view(out), saved, ws, ctx);
    if constexpr (pf::ParametrizedAttention<Policy>)
      policy.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::cview(out), pf::cview(dout), saved,
                      pf::view(dq), pf::view(dk), pf::view(dv), grads, ws, ctx);
    else
      policy.backward(shape, pf::cview(q), pf::cview(k), pf::cview(v), mask, pf::cview(out), pf::cview(dout), saved,
                      pf::view(dq), pf::view(dk), pf::view(dv), ws, ctx);
  };
  step();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(dq.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, 0.0);
  memory.report(state);
  state.SetLabel(policy.spelling());
}

void policy_sizes(benchmark::internal::Benchmark* b, pf::Index max_n) {
  b->ArgNames({"n", "threads"});
  for (pf::Index n = 1024; n <= max_n; n *= 2) b->Args({n, 1});
  b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
}
void efficient_sizes(benchmark::internal::Benchmark* b) { policy_sizes(b, 32768); }
void full_sizes(benchmark::internal::Benchmark* b) { policy_sizes(b, 4096); }  // larger n: BM_attention

}  // namespace

BENCHMARK(BM_attention)->Apply(small_sizes);
BENCHMARK(BM_attention)->Apply(large_sizes);
BENCHMARK(BM_attention_train)->Apply(small_sizes);
BENCHMARK(BM_attention_train)->Apply(large_sizes);

namespace {
/// BM_policy/<name> for every policy of the registry, exact attention to n = 4096 only (larger n: BM_attention);
/// BM_policy_train/<name> at n = 4096.
const bool policies_registered = [] {
  pf::for_each_attention_policy([]<typename P>(std::type_identity<P>) {
    benchmark::RegisterBenchmark((std::string("BM_policy/") + P::name).c_str(), BM_policy<P>)
        ->Apply(std::is_same_v<P, pf::FullAttention> ? full_sizes : efficient_sizes);
    benchmark::RegisterBenchmark((std::string("BM_policy_train/") + P::name).c_str(), BM_policy_train<P>)
        ->ArgNames({"n", "threads"})->Args({4096, 1})->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
  });
  return true;
}();
}  // namespace

POLYFORMER_BENCHMARK_MAIN()
