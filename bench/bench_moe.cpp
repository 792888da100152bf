// A mixture-of-experts FFN (layers/moe.hpp) against the dense FFN of one expert's shape: 8 experts of
// d 768 → 3072 → 768 (ReLU), top-2, a random router (routing spread over all experts), unlimited capacity,
// n = 512 tokens; and one FeedForward of that shape on the same tokens. Top-2 does twice the dense FFN's
// arithmetic, so MoE / dense = 2 is the floor. BM_moe_ffn also times the dense FFN in the same benchmark,
// alternating with the MoE (best of 5 each), and reports the ratio as x_dense, so the comparison does not
// straddle a change in the machine's load.
//
//   bench_moe --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <utility>
#include <vector>

#include "main.hpp"
#include "counters.hpp"
#include "memory.hpp"
#include "polyformer/polyformer.hpp"

namespace pf = polyformer;

namespace {

constexpr pf::Index d_model = 768, d_ffn = 3072, n_experts = 8;
constexpr int top_k = 2;

using FFN = pf::FeedForward<pf::Dense, pf::ReLU>;
using MoE = pf::MixtureOfExperts<pf::Dense, pf::ReLU>;

pf::Dense random_dense(pf::Index in, pf::Index out) {
  return pf::Dense(pf::Matrix::Random(out, in) / std::sqrt(static_cast<float>(in)), pf::Vector::Random(out) * 0.1f);
}

FFN random_ffn() { return FFN(random_dense(d_model, d_ffn), random_dense(d_ffn, d_model)); }

MoE random_moe() {
  std::vector<FFN> experts;
  for (pf::Index e = 0; e < n_experts; ++e) experts.push_back(random_ffn());
  return MoE(random_dense(d_model, n_experts), std::move(experts), top_k);
}

/// 4·n·d·ffn per FFN pass (up and down).
double ffn_flops(double n) { return 4 * n * static_cast<double>(d_model) * static_cast<double>(d_ffn); }
/// k passes per token plus the router 2·n·d·E.
double moe_flops(double n) {
  return top_k * ffn_flops(n) + 2 * n * static_cast<double>(d_model) * static_cast<double>(n_experts);
}

/// Best wall time (seconds) of `reps` calls of f.
template <typename F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void BM_moe_ffn(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  std::srand(1);
  const MoE moe = random_moe();
  const pf::Matrix x = pf::Matrix::Random(n, d_model);
  pf::Matrix y(n, d_model);
  MoE::Workspace ws;
  const bench::PeakMemory memory;
  moe.forward(pf::cview(x), pf::view(y), ws, ctx);  // warm-up: sizes the workspace once
  const bench::LoopClock clock;
  for (auto _ : state) {
    moe.forward(pf::cview(x), pf::view(y), ws, ctx);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, moe_flops(static_cast<double>(n)));
  memory.report(state);
  // The routing: the busiest expert's rows over the mean (1 = perfectly even), and the aux loss.
  const auto counts = ws.expert_counts();
  state.counters["max_load"] = benchmark::Counter(static_cast<double>(*std::max_element(counts.begin(), counts.end())) *
                                                  static_cast<double>(n_experts) / static_cast<double>(n * top_k));
  state.counters["aux"] = benchmark::Counter(ws.aux_loss);
  // The dense FFN of one expert's shape in the same process, alternating with the MoE.
  const FFN dense = random_ffn();
  FFN::Workspace dense_ws;
  dense.forward(pf::cview(x), pf::view(y), dense_ws, ctx);
  double moe_best = 1e30, dense_best = 1e30;
  for (int round = 0; round < 5; ++round) {
    moe_best = std::min(moe_best, best_seconds(1, [&] { moe.forward(pf::cview(x), pf::view(y), ws, ctx); }));
    dense_best =
        std::min(dense_best, best_seconds(1, [&] { dense.forward(pf::cview(x), pf::view(y), dense_ws, ctx); }));
  }
  state.counters["dense_ms"] = benchmark::Counter(dense_best * 1e3);
  state.counters["x_dense"] = benchmark::Counter(moe_best / dense_best);
}

void BM_dense_ffn(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  std::srand(1);
  const FFN ffn = random_ffn();
  const pf::Matrix x = pf::Matrix::Random(n, d_model);
  pf::Matrix y(n, d_model);
  FFN::Workspace ws;
  const bench::PeakMemory memory;
  ffn.forward(pf::cview(x), pf::view(y), ws, ctx);  // warm-up: sizes the workspace once
  const bench::LoopClock clock;
  for (auto _ : state) {
    ffn.forward(pf::cview(x), pf::view(y), ws, ctx);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, ffn_flops(static_cast<double>(n)));
  memory.report(state);
}

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2}) b->Args({512, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_moe_ffn)->Apply(sizes);
BENCHMARK(BM_dense_ffn)->Apply(sizes);

POLYFORMER_BENCHMARK_MAIN()
