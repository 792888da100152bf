#pragma once
/// \file The one place threads are started: parallel_chunks and parallel_for over an index range, run by a
/// small persistent pool of std::threads.
///
/// Why not OpenMP: a decoding step runs ~100 short parallel regions (one per matrix-vector product), tens of
/// microseconds apart. libgomp's passive wait policy puts idle workers to sleep, and waking one costs tens of
/// microseconds on a virtual machine — as much as the product itself; its active policy spins forever. The
/// pool's workers spin for a bounded time after each region (long enough to bridge the gaps inside a
/// forward), then sleep on a futex (C++20 atomic wait), so back-to-back regions start in well under a
/// microsecond and an idle process burns no core.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"

namespace polyformer {

/// How many threads a forward may use for a request of `requested` (>= 1).
inline int effective_threads(int requested) {
  if (requested < 1) throw config_error(detail::cat("effective_threads: threads is ", requested, ", expected >= 1"));
  return requested;
}

namespace detail {

/// A CPU hint for spin loops.
inline void spin_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Persistent workers 1..n; the calling thread is member 0 of every team. One region at a time (a region
/// started from inside a region runs serially on the calling thread).
class ThreadPool {
 public:
  /// How long an idle worker spins before it sleeps.
  static constexpr std::chrono::microseconds spin_time{300};

  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(dispatch_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_seq_cst);
      generation_.notify_all();
    }
    for (auto& w : workers_) w.join();
  }

  /// Calls body(i) for i in [0, team) on `team` threads (body(0) on the caller) and returns when all are done.
  template <typename Body>
  void run(int team, Body& body) {
    if (team <= 1 || inside_region()) {
      for (int i = 0; i < team; ++i) body(i);
      return;
    }
    std::lock_guard<std::mutex> lock(dispatch_);
    grow(team - 1);
    job_ = Job{&call<Body>, &body, team};
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes job_
    if (sleepers_.load(std::memory_order_seq_cst) > 0) generation_.notify_all();
    inside_region() = true;
    body(0);
    inside_region() = false;
    // Every worker acknowledges every region (members after running their part), so job_ is never
    // rewritten while a worker may still read it.
    for (unsigned spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins < 4096) spin_pause();
      else std::this_thread::yield();
    }
  }

 private:
  struct Job {
    void (*fn)(void*, int) = nullptr;
    void* body = nullptr;
    int team = 0;
  };

  ThreadPool() = default;

  template <typename Body>
  static void call(void* body, int index) {
    (*static_cast<Body*>(body))(index);
  }

  static bool& inside_region() {
    thread_local bool inside = false;
    return inside;
  }

  /// At least n workers (under dispatch_).
  void grow(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int index = static_cast<int>(workers_.size()) + 1;
      const std::uint64_t seen = generation_.load(std::memory_order_relaxed);
      workers_.emplace_back([this, index, seen] { work(index, seen); });
    }
  }

  void work(int index, std::uint64_t seen) {
    inside_region() = true;
    for (;;) {
      wait_past(seen);
      seen = generation_.load(std::memory_order_acquire);
      if (stop_) return;
      const Job job = job_;
      if (index < job.team) job.fn(job.body, index);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  /// Returns once the generation differs from `seen`: spins for spin_time, then sleeps.
  void wait_past(std::uint64_t seen) {
    const auto start = std::chrono::steady_clock::now();
    for (unsigned spins = 1;; ++spins) {
      if (generation_.load(std::memory_order_acquire) != seen) return;
      spin_pause();
      if (spins % 256 == 0 && std::chrono::steady_clock::now() - start > spin_time) break;
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (generation_.load(std::memory_order_seq_cst) == seen) generation_.wait(seen, std::memory_order_seq_cst);
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }

  std::mutex dispatch_;
  std::vector<std::thread> workers_;
  Job job_{};
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  bool stop_ = false;  // written under dispatch_ before the generation bump that workers acquire
};

}  // namespace detail

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
  auto chunk = [&](int id) { body(n * id / t, n * (id + 1) / t, id); };
  detail::ThreadPool::instance().run(t, chunk);
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
  std::atomic<Index> next{0};
  auto worker = [&](int id) {
    for (Index i = next.fetch_add(1, std::memory_order_relaxed); i < n; i = next.fetch_add(1, std::memory_order_relaxed))
      body(i, id);
  };
  detail::ThreadPool::instance().run(t, worker);
}

}  // namespace polyformer
