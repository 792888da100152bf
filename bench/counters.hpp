#pragma once
/// \file The per-iteration counters every bench reports, polyformer's and the peers' alike.

#include <benchmark/benchmark.h>

#include <chrono>

namespace bench {

/// Wall clock over the measured loop: construct it right before `for (auto _ : state)`, call report()
/// right after. Gives counters GFLOP/s (from `flops` per iteration) and ms (per iteration), as plain
/// numbers (Google Benchmark's rate counters would print "GFLOP/s=80/s"). Wall time is what the benches
/// time anyway (UseRealTime): worker threads run outside the benchmark's CPU timer.
class LoopClock {
 public:
  LoopClock() : start_(std::chrono::steady_clock::now()) {}

  void report(benchmark::State& state, double flops) const {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double iterations = static_cast<double>(state.iterations());
    if (iterations <= 0 || seconds <= 0) return;
    state.counters["GFLOP/s"] = benchmark::Counter(flops * iterations / seconds * 1e-9);
    state.counters["ms"] = benchmark::Counter(seconds * 1e3 / iterations);
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace bench
