// kernels::cpu() against what Linux reads of the same CPU: the flags in /proc/cpuinfo (the kernel's own
// CPUID decoding, with the extensions it has not enabled removed) and the cache sizes in sysfs.

#include <catch2/catch.hpp>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/packed_gemm.hpp"

namespace k = polyformer::kernels;

namespace {

/// The flags of the first processor in /proc/cpuinfo; empty when the file is missing.
std::set<std::string> linux_cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

/// Size in bytes of cpu0's cache at `level` of a data or unified type, from sysfs; 0 when not listed.
std::size_t linux_cache_bytes(int level) {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream lv(dir + "level"), type(dir + "type"), size(dir + "size");
    int l = 0;
    std::string t, s;
    if (!(lv >> l) || !(type >> t) || !(size >> s)) continue;
    if (l != level || t == "Instruction") continue;
    std::size_t value = std::stoul(s);
    if (s.back() == 'K') value *= 1024;
    else if (s.back() == 'M') value *= 1024 * 1024;
    return value;
  }
  return 0;
}

}  // namespace

TEST_CASE("kernels/cpu: instruction sets agree with /proc/cpuinfo", "[kernels][cpu]") {
  const auto flags = linux_cpu_flags();
  if (flags.empty()) {
    WARN("no /proc/cpuinfo flags: nothing to compare against");
    return;
  }
  const k::CpuInfo& cpu = k::cpu();
  INFO("vendor " << cpu.vendor << " family " << cpu.family << " model " << cpu.model);
  const auto has = [&](const char* f) { return flags.count(f) != 0; };
  CHECK(cpu.fma == (has("fma") && has("avx")));
  CHECK(cpu.avx2 == (cpu.fma && has("avx2")));
  CHECK(cpu.avx512 == (cpu.avx2 && has("avx512f") && has("avx512bw") && has("avx512dq") && has("avx512vl")));
  CHECK(cpu.avx512_vnni == (cpu.avx512 && has("avx512_vnni")));
  CHECK(cpu.avx512_bf16 == (cpu.avx512 && has("avx512_bf16")));
  // AMX also needs this process's permission, which cpu() asked for; Linux lists the flag either way.
  if (cpu.amx_bf16) CHECK(has("amx_bf16"));
  if (cpu.amx_int8) CHECK(has("amx_int8"));
  if (!has("amx_tile")) CHECK_FALSE((cpu.amx_bf16 || cpu.amx_int8));
  WARN("this CPU: " << cpu.vendor << " family " << cpu.family << " model " << cpu.model << ", kernels "
                    << k::isa_name(k::isa()) << (cpu.avx512_bf16 ? ", avx512_bf16" : "")
                    << (cpu.avx512_vnni ? ", avx512_vnni" : "") << (cpu.amx_bf16 ? ", amx_bf16" : "")
                    << (cpu.amx_int8 ? ", amx_int8" : ""));
}

TEST_CASE("kernels/cpu: cache sizes agree with sysfs", "[kernels][cpu]") {
  const k::CpuInfo& cpu = k::cpu();
  for (int level : {1, 2, 3}) {
    const std::size_t linux_bytes = linux_cache_bytes(level);
    if (linux_bytes == 0) {
      WARN("sysfs lists no level-" << level << " cache: not compared");
      continue;
    }
    INFO("level " << level);
    CHECK((level == 1 ? cpu.l1d_bytes : level == 2 ? cpu.l2_bytes : cpu.l3_bytes) == linux_bytes);
  }
}

TEST_CASE("kernels/cpu: the chosen kernel family is one this CPU runs", "[kernels][cpu]") {
  CHECK(k::cpu_supports(k::isa()));
  CHECK(k::cpu_supports(k::Isa::portable));
  if (!k::cpu_supports(k::Isa::avx512)) {
    const float w[4] = {1, 2, 3, 4};
    CHECK_THROWS_WITH(k::PackedMatrix::pack_transposed(w, 2, 2, 2, k::Isa::avx512),
                      Catch::Contains("PackedMatrix::repack_transposed: for_isa is avx512"));
  }
}
