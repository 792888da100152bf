#pragma once
/// \file Peak resident memory of one benchmark, for polyformer's benches and the peers alike (standard
/// library and Google Benchmark only: the peers do not link polyformer).
///
/// Linux keeps a per-process high-water mark of resident memory (VmHWM in /proc/self/status). Writing "5"
/// to /proc/self/clear_refs resets it to the current RSS (proc(5)), so a benchmark can measure its own
/// peak: construct a PeakMemory after the inputs exist and before the first forward, and call report()
/// after the measured loop. Where clear_refs is not writable the mark is the whole process's so far,
/// and the benchmark's label says so.

#include <benchmark/benchmark.h>
#include <malloc.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

namespace bench {

/// Reads a "Name:   123 kB" field of /proc/self/status, in MiB; negative when absent.
inline double proc_status_mib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t len = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, len, field) == 0 && line.size() > len && line[len] == ':')
      return std::stod(line.substr(len + 1)) / 1024.0;  // the kernel reports kB
  return -1.0;
}

/// Resets the process's peak RSS on construction; report() adds the peak to a benchmark's counters.
class PeakMemory {
 public:
  PeakMemory() {
    malloc_trim(0);  // hand back what earlier benchmarks freed, so it does not count as ours
    std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
    if (f) {
      reset_ = std::fputs("5", f) >= 0;
      reset_ = (std::fclose(f) == 0) && reset_;
    }
    baseline_mib_ = proc_status_mib("VmRSS");
  }

  bool reset() const noexcept { return reset_; }

  /// Peak RSS since construction (MiB), or the process's lifetime peak when the reset failed.
  double peak_mib() const { return proc_status_mib("VmHWM"); }

  /// Counters peak_MB (the high-water mark: everything resident, libraries and inputs included) and
  /// extra_MB (peak minus the RSS at construction: what the measured code allocated and touched).
  void report(benchmark::State& state, std::string label = {}) const {
    const double peak = peak_mib();
    state.counters["peak_MB"] = benchmark::Counter(peak);
    state.counters["extra_MB"] = benchmark::Counter(peak - baseline_mib_);
    if (!reset_) {  // (appended piecewise: g++ 12 -O3 warns falsely on const char* + std::string here)
      if (!label.empty()) label += ' ';
      label += "peak_MB is the process peak (clear_refs not writable)";
    }
    if (!label.empty()) state.SetLabel(label);
  }

 private:
  bool reset_ = false;
  double baseline_mib_ = 0.0;
};

}  // namespace bench
