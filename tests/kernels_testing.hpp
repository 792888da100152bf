#pragma once
/// \file Shared helpers for the kernel tests: tail lengths, seeded random data, guarded buffers, ulp.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <new>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "polyformer/kernels/cpu.hpp"
#include "polyformer/kernels/simd.hpp"

#if defined(__unix__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace polyformer::kernels::testing {

/// Float lanes of the default architecture of this build (16 AVX-512, 8 AVX2, 4 SSE2).
inline constexpr std::size_t lanes = lanes_v<>;

/// Of the code paths `all` (an Isa, Bf16Path or Int8Path list), those this CPU runs, each to be tested; the others
/// are reported as skipped for `kernels`, by their names (`name(path)`).
template <class Path, class Name>
std::vector<Path> runnable(std::initializer_list<Path> all, Name&& name, const char* kernels) {
  std::vector<Path> out;
  for (Path p : all) {
    if (cpu_supports(p)) out.push_back(p);
    else WARN(kernels << ": skipped the " << name(p) << " kernels (this CPU lacks them)");
  }
  return out;
}

/// The kernel families (Isa) this CPU runs.
inline std::vector<Isa> runnable_isas(const char* kernels) {
  return runnable({Isa::portable, Isa::avx2, Isa::avx512}, isa_name, kernels);
}

/// Unit roundoff of float, 2^-24.
inline constexpr double u = 5.9604644775390625e-08;

/// Every tail length 0..2·16+1 (two vectors of the widest kernels and a tail), then a few long rows (odd, so the
/// tail path runs too).
inline std::vector<std::size_t> lengths() {
  std::vector<std::size_t> out;
  for (std::size_t n = 0; n <= 2 * 16 + 1; ++n) out.push_back(n);  // 16: the widest run-time kernels' lanes
  for (std::size_t n : {63u, 100u, 257u, 768u, 1000u, 4099u}) out.push_back(n);
  return out;
}

/// n floats uniform in [lo, hi) from a fixed-seed generator.
inline std::vector<float> random_vec(std::size_t n, float lo, float hi, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

/// n floats whose last element sits just before an inaccessible page, so any kernel that reads or
/// writes past index n - 1 crashes the test instead of passing silently. Not 16-byte aligned in
/// general, which also exercises the unaligned loads.
class Guarded {
 public:
  explicit Guarded(std::size_t n) : n_(n) {
#if defined(__unix__)
    const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    body_ = (n * sizeof(float) + page - 1) / page * page;
    total_ = body_ + page;
    void* p = mmap(nullptr, total_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<char*>(p);
    mprotect(base_ + body_, page, PROT_NONE);
    data_ = reinterpret_cast<float*>(base_ + body_) - n;
#else
    fallback_.resize(n + 64);
    data_ = fallback_.data();
#endif
  }
  Guarded(std::size_t n, const std::vector<float>& init) : Guarded(n) {
    if (n != 0) std::memcpy(data_, init.data(), n * sizeof(float));
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  ~Guarded() {
#if defined(__unix__)
    munmap(base_, total_);
#endif
  }
  float* data() { return data_; }
  const float* data() const { return data_; }
  float& operator[](std::size_t i) { return data_[i]; }
  float operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return n_; }
  std::vector<float> vec() const { return std::vector<float>(data_, data_ + n_); }

 private:
  std::size_t n_ = 0;
  float* data_ = nullptr;
#if defined(__unix__)
  char* base_ = nullptr;
  std::size_t body_ = 0, total_ = 0;
#else
  std::vector<float> fallback_;
#endif
};

/// |y - ref| in units of the float spacing at ref (subnormal spacing below 2^-126).
inline double ulp_error(float y, double ref) {
  if (std::isnan(ref)) return std::isnan(y) ? 0.0 : 1e30;
  const float rounded = static_cast<float>(ref);  // +-inf when ref is beyond float's range
  if (std::isinf(rounded) || std::isinf(y)) return y == rounded ? 0.0 : 1e30;
  int e = 0;
  std::frexp(ref, &e);
  const double spacing = std::ldexp(1.0, e - 24 < -149 ? -149 : e - 24);
  return std::fabs(static_cast<double>(y) - ref) / spacing;
}

}  // namespace polyformer::kernels::testing
