#pragma once
/// \file What the CPU the program runs on can do, read once at run time: vendor, family and model, the
/// instruction-set extensions the kernels use (checked against what the operating system saves on a
/// context switch, XGETBV), and the data-cache sizes. Kernels pick their code path and block sizes from
/// it (`kernels::isa()`), so a program compiled once for x86-64 runs the widest kernels each machine has.
///
/// Sources: Intel SDM vol. 2A, CPUID leaves 1, 4 and 7; AMD APM vol. 3, leaves 0x8000001D/0x80000005/6.
/// AMX needs the kernel's leave to use its tile state (Linux 5.16+, arch_prctl(ARCH_REQ_XCOMP_PERM)): asked
/// once, on first use; when refused, the AMX paths are off and the AVX-512 ones run.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define POLYFORMER_X86 1
#else
#define POLYFORMER_X86 0
#endif
#if POLYFORMER_X86 && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/// Function attributes that let one translation unit, compiled for any x86-64, hold kernels for wider
/// instruction sets: code under them runs only after cpu() says the CPU has the set.
#if POLYFORMER_X86 && (defined(__GNUC__) || defined(__clang__))
#define POLYFORMER_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define POLYFORMER_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define POLYFORMER_RUNTIME_DISPATCH 1
#else
#define POLYFORMER_RUNTIME_DISPATCH 0
#endif

namespace polyformer::kernels {

/// One reading of the CPU. Every flag is true only when the CPU has the extension *and* the operating system
/// saves its registers (for AMX: and granted this process the tile state).
struct CpuInfo {
  std::string vendor;   ///< "GenuineIntel", "AuthenticAMD", ... ("" off x86)
  unsigned family = 0;  ///< display family (base + extended)
  unsigned model = 0;   ///< display model (base + extended)
  bool fma = false, avx2 = false;
  bool avx512 = false;       ///< AVX-512 F + BW + DQ + VL: the set the AVX-512 kernels are written for
  bool avx512_vnni = false;  ///< vpdpbusd
  bool avx512_bf16 = false;  ///< vdpbf16ps, vcvtne2ps2bf16
  bool amx_bf16 = false, amx_int8 = false;  ///< tile products (AMX-TILE included), permission granted
  std::size_t l1d_bytes = 32 * 1024;   ///< per core; the defaults stand when CPUID does not tell
  std::size_t l2_bytes = 1024 * 1024;  ///< per core
  std::size_t l3_bytes = 0;            ///< whole cache, shared; 0 when there is none or it is not reported
};

namespace detail {

#if POLYFORMER_X86
struct CpuidRegs {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

inline CpuidRegs cpuid(unsigned leaf, unsigned subleaf = 0) noexcept {
  CpuidRegs r;
  if (!__get_cpuid_count(leaf, subleaf, &r.eax, &r.ebx, &r.ecx, &r.edx)) r = {};
  return r;
}

inline bool bit(unsigned reg, int i) noexcept { return ((reg >> i) & 1u) != 0; }

/// XCR0: the register state the operating system saves (bits 1-2 SSE/AVX, 5-7 AVX-512, 17-18 AMX tiles).
inline std::uint64_t xcr0() noexcept {
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t{hi} << 32) | lo;
}

/// Asks Linux for the AMX tile state (XFEATURE 18); true when granted (or already granted).
inline bool request_amx_permission() noexcept {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
  return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
#else
  return false;
#endif
}

/// Cache sizes from the deterministic cache leaf (Intel leaf 4, AMD 0x8000001D: the same layout).
inline void read_caches(unsigned leaf, CpuInfo& info) noexcept {
  for (unsigned sub = 0; sub < 16; ++sub) {
    const CpuidRegs r = cpuid(leaf, sub);
    const unsigned type = r.eax & 0x1f;  // 0: no more caches, 1: data, 2: instruction, 3: unified
    if (type == 0) break;
    if (type == 2) continue;
    const unsigned level = (r.eax >> 5) & 7;
    const std::size_t bytes = std::size_t{((r.ebx >> 22) & 0x3ff) + 1} * (((r.ebx >> 12) & 0x3ff) + 1) *
                              ((r.ebx & 0xfff) + 1) * (std::size_t{r.ecx} + 1);
    if (level == 1) info.l1d_bytes = bytes;
    else if (level == 2) info.l2_bytes = bytes;
    else if (level == 3) info.l3_bytes = bytes;
  }
}
#endif

inline CpuInfo read_cpu() noexcept {
  CpuInfo info;
#if POLYFORMER_X86
  const CpuidRegs v = cpuid(0);
  const unsigned max_leaf = v.eax;
  char name[13] = {};
  for (int i = 0; i < 4; ++i) {
    name[i] = static_cast<char>(v.ebx >> (8 * i));
    name[4 + i] = static_cast<char>(v.edx >> (8 * i));
    name[8 + i] = static_cast<char>(v.ecx >> (8 * i));
  }
  info.vendor = name;
  const CpuidRegs l1 = cpuid(1);
  const unsigned base_family = (l1.eax >> 8) & 0xf, base_model = (l1.eax >> 4) & 0xf;
  info.family = base_family == 0xf ? base_family + ((l1.eax >> 20) & 0xff) : base_family;
  info.model = (base_family == 0x6 || base_family == 0xf) ? base_model | (((l1.eax >> 16) & 0xf) << 4) : base_model;

  const bool osxsave = bit(l1.ecx, 27);
  const std::uint64_t xcr = osxsave ? xcr0() : 0;
  const bool os_avx = (xcr & 0x6) == 0x6, os_avx512 = os_avx && (xcr & 0xe0) == 0xe0;
  const bool os_amx = (xcr & 0x60000) == 0x60000;
  const CpuidRegs l7 = max_leaf >= 7 ? cpuid(7) : CpuidRegs{};
  const CpuidRegs l7s1 = max_leaf >= 7 && l7.eax >= 1 ? cpuid(7, 1) : CpuidRegs{};
  info.fma = os_avx && bit(l1.ecx, 12) && bit(l1.ecx, 28);
  info.avx2 = info.fma && bit(l7.ebx, 5);
  info.avx512 = os_avx512 && info.avx2 && bit(l7.ebx, 16) && bit(l7.ebx, 17) && bit(l7.ebx, 30) && bit(l7.ebx, 31);
  info.avx512_vnni = info.avx512 && bit(l7.ecx, 11);
  info.avx512_bf16 = info.avx512 && bit(l7s1.eax, 5);
  const bool amx_tile = os_amx && bit(l7.edx, 24);
  if (amx_tile && (bit(l7.edx, 22) || bit(l7.edx, 25)) && request_amx_permission()) {
    info.amx_bf16 = bit(l7.edx, 22);
    info.amx_int8 = bit(l7.edx, 25);
  }

  if (max_leaf >= 4 && info.vendor == "GenuineIntel") {
    read_caches(4, info);
  } else if (cpuid(0x80000000).eax >= 0x8000001d && bit(cpuid(0x80000001).ecx, 22)) {  // AMD topology extensions
    read_caches(0x8000001d, info);
  } else if (cpuid(0x80000000).eax >= 0x80000006) {  // older AMD: sizes in KiB
    info.l1d_bytes = std::size_t{cpuid(0x80000005).ecx >> 24} * 1024;
    const CpuidRegs l2 = cpuid(0x80000006);
    info.l2_bytes = std::size_t{l2.ecx >> 16} * 1024;
    info.l3_bytes = std::size_t{l2.edx >> 18} * 512 * 1024;
  }
#endif
  return info;
}

}  // namespace detail

/// The CPU this process runs on, read on first use (thread-safe) and never again.
inline const CpuInfo& cpu() noexcept {
  static const CpuInfo info = detail::read_cpu();
  return info;
}

/// A family of kernels, from the portable C++ loops to the widest extension; each one needs the ones before it
/// except `amx`, which needs `avx512_bf16`'s AVX-512 base only.
enum class Isa : int {
  portable = 0,  ///< plain C++ the compiler vectorizes for the build's own target
  avx2 = 1,      ///< AVX2 + FMA (256-bit)
  avx512 = 2,    ///< AVX-512 F/BW/DQ/VL (512-bit, 32 registers)
};

/// "portable", "avx2", "avx512".
inline const char* isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    default: return "portable";
  }
}

/// Whether this CPU (and operating system) can run `isa`'s kernels.
inline bool cpu_supports(Isa isa) noexcept {
  switch (isa) {
    case Isa::portable: return true;
    case Isa::avx2: return cpu().avx2;
    case Isa::avx512: return cpu().avx512;
  }
  return false;
}

namespace detail {

/// The widest supported family, capped by the environment variable POLYFORMER_ISA ("portable", "avx2",
/// "avx512"): a way to run or measure a narrower path on a wide machine. An unknown value is ignored.
inline Isa choose_isa() noexcept {
  Isa best = cpu_supports(Isa::avx512) ? Isa::avx512 : cpu_supports(Isa::avx2) ? Isa::avx2 : Isa::portable;
  if (const char* cap = std::getenv("POLYFORMER_ISA")) {
    const std::string_view want(cap);
    for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512})
      if (want == isa_name(isa) && static_cast<int>(isa) < static_cast<int>(best)) best = isa;
  }
  return best;
}

}  // namespace detail

/// The kernel family this process uses for the products chosen at run time (packed GEMM): the widest one the
/// CPU supports, or less when POLYFORMER_ISA says so. Fixed at first use.
inline Isa isa() noexcept {
  static const Isa chosen = detail::choose_isa();
  return chosen;
}

}  // namespace polyformer::kernels
