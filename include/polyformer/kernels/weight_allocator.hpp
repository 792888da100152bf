#pragma once
/// \file The allocator of packed weights: 64-byte aligned like Eigen's, and a buffer of 2 MiB or more aligned to
/// 2 MiB and, on Linux, asked for transparent huge pages (madvise MADV_HUGEPAGE) before it is first touched. A
/// decode streams every weight once per token; on 4 KiB pages that is a TLB miss every 4 KiB, and where the kernel
/// gives huge pages only on request (transparent_hugepage "madvise") this request is what gets them. On a Zen 4
/// under KVM it took the 110M Llama's one-thread decode from about 22 to 25 GB/s of weights.

#include <cstddef>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace polyformer::kernels {

template <typename T>
struct WeightAllocator {
  using value_type = T;

  static constexpr std::size_t huge_page = std::size_t(2) << 20;

  WeightAllocator() noexcept = default;
  template <typename U>
  WeightAllocator(const WeightAllocator<U>&) noexcept {}  // NOLINT: rebinding

  T* allocate(std::size_t n) {
    if (n > (static_cast<std::size_t>(-1) - huge_page) / sizeof(T)) throw std::bad_array_new_length();
    const std::size_t bytes = n * sizeof(T);
    void* p = ::operator new(bytes, std::align_val_t(alignment(bytes)));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= huge_page) (void)madvise(p, bytes / huge_page * huge_page, MADV_HUGEPAGE);  // a hint: may be refused
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) noexcept { ::operator delete(p, std::align_val_t(alignment(n * sizeof(T)))); }

  template <typename U>
  bool operator==(const WeightAllocator<U>&) const noexcept {
    return true;
  }

 private:
  static std::size_t alignment(std::size_t bytes) noexcept { return bytes >= huge_page ? huge_page : 64; }
};

}  // namespace polyformer::kernels
