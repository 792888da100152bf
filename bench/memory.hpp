#pragma once
/// \file Peak resident memory of one benchmark as Google Benchmark counters, for polyformer's benches and the
/// peers alike (the peers do not link polyformer). The probe itself is resident_memory.hpp: construct a
/// PeakMemory after the inputs exist and before the first forward, and call report() after the measured loop.
/// Where clear_refs is not writable the mark is the whole process's so far, and the benchmark's label says so.

#include <benchmark/benchmark.h>

#include <string>

#include "resident_memory.hpp"

namespace bench {

/// Resets the process's peak RSS on construction; report() adds the peak to a benchmark's counters.
class PeakMemory {
 public:
  bool reset() const noexcept { return probe_.reset(); }

  /// Peak RSS since construction (MiB), or the process's lifetime peak when the reset failed.
  double peak_mib() const { return probe_.peak_mib(); }

  /// Counters peak_MB (the high-water mark: everything resident, libraries and inputs included) and
  /// extra_MB (peak minus the RSS at construction: what the measured code allocated and touched).
  void report(benchmark::State& state, std::string label = {}) const {
    const double peak = peak_mib();
    state.counters["peak_MB"] = benchmark::Counter(peak);
    state.counters["extra_MB"] = benchmark::Counter(peak - probe_.baseline_mib());
    if (!probe_.reset()) {  // (appended piecewise: g++ 12 -O3 warns falsely on const char* + std::string here)
      if (!label.empty()) label += ' ';
      label += "peak_MB is the process peak (clear_refs not writable)";
    }
    if (!label.empty()) state.SetLabel(label);
  }

 private:
  ResidentPeak probe_;
};

}  // namespace bench
