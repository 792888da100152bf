#pragma once
/// \file The one place threads are started: parallel_for over an index range.

#include <algorithm>
#include <cstddef>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace polyformer {

/// How many threads a forward may use. Without OpenMP every count runs serially (correct, slower).
struct Threads {
  int count = 1;
};

/// Number of threads the build can actually use for a request of `requested`.
inline int effective_threads(int requested) {
  if (requested < 1) throw config_error(detail::cat("effective_threads: threads is ", requested, ", expected >= 1"));
#ifdef _OPENMP
  return requested;
#else
  return 1;
#endif
}

/// Calls body(begin, end, thread_index) on `threads` contiguous chunks of [0, n), in parallel.
/// Chunks are balanced to within one item. body must not throw.
template <typename Body>
void parallel_chunks(Index n, int threads, Body&& body) {
  if (n <= 0) return;
  const int t = static_cast<int>(std::min<Index>(effective_threads(threads), n));
  if (t == 1) {
    body(Index{0}, n, 0);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(t)
  {
    const int id = omp_get_thread_num();
    const Index begin = n * id / t, end = n * (id + 1) / t;
    body(begin, end, id);
  }
#endif
}

/// Calls body(i, thread_index) for every i in [0, n), dynamically scheduled over `threads` threads.
/// Use for uneven work (causal attention tiles). body must not throw.
template <typename Body>
void parallel_for(Index n, int threads, Body&& body) {
  if (n <= 0) return;
  const int t = static_cast<int>(std::min<Index>(effective_threads(threads), n));
  if (t == 1) {
    for (Index i = 0; i < n; ++i) body(i, 0);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(t) schedule(dynamic, 1)
  for (Index i = 0; i < n; ++i) body(i, omp_get_thread_num());
#endif
}

}  // namespace polyformer
