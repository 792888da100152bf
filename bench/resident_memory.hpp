#pragma once
/// \file Peak resident memory of a piece of code, with the standard library only (no Google Benchmark), for
/// the benchmarks (memory.hpp) and for example programs (attention_zoo).
///
/// Linux keeps a per-process high-water mark of resident memory (VmHWM in /proc/self/status). Writing "5"
/// to /proc/self/clear_refs resets it to the current RSS (proc(5)), so code can measure its own peak:
/// construct a ResidentPeak after the inputs exist and before the measured code runs.

#include <malloc.h>

#include <algorithm>
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

/// Hands freed heap back to the system and resets the high-water mark on construction.
class ResidentPeak {
 public:
  ResidentPeak() {
    malloc_trim(0);  // what earlier code freed does not count as ours
    if (std::FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
      reset_ = std::fputs("5", f) >= 0;
      reset_ = std::fclose(f) == 0 && reset_;
    }
    baseline_mib_ = proc_status_mib("VmRSS");
  }

  /// Whether the high-water mark was reset (false: clear_refs not writable).
  bool reset() const noexcept { return reset_; }
  /// RSS at construction (MiB).
  double baseline_mib() const noexcept { return baseline_mib_; }
  /// Peak RSS since construction (MiB), or the process's lifetime peak when the reset failed.
  double peak_mib() const { return proc_status_mib("VmHWM"); }
  /// The peak above the RSS at construction; without the reset, the RSS now above it (what is still held).
  double extra_mib() const { return std::max(0.0, proc_status_mib(reset_ ? "VmHWM" : "VmRSS") - baseline_mib_); }

 private:
  bool reset_ = false;
  double baseline_mib_ = 0.0;
};

}  // namespace bench
