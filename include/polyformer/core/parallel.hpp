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

#if defined(__linux__)
#include <sched.h>
#endif

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

/// Persistent workers shared by every caller. A parallel region of `team` members claims team − 1 idle
/// workers (starting new ones when none is idle), so regions started by different user threads run side by
/// side on workers of their own; the calling thread is member 0 of its team. A region started from inside a
/// region runs serially on the calling thread.
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
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& w : workers_) {
      w->stop = true;
      w->generation.fetch_add(1, std::memory_order_seq_cst);
      w->generation.notify_one();
    }
    for (auto& w : workers_) w->thread.join();
  }

  /// Calls body(i) for i in [0, team) on `team` threads (body(0) on the caller) and returns when all are done.
  template <typename Body>
  void run(int team, Body& body) {
    if (team <= 1 || inside_region()) {
      for (int i = 0; i < team; ++i) body(i);
      return;
    }
    run_concurrently(team, body);
  }

  /// As run(), but only when the `team` members are sure to run at the same time (they may wait for each other):
  /// false, calling nothing, from inside a region (which runs serially) or for more members than a team holds.
  template <typename Body>
  bool run_team(int team, Body& body) {
    if (team < 1 || team > max_team || inside_region()) return false;
    if (team == 1) body(0);
    else run_concurrently(team, body);
    return true;
  }

 private:
  static constexpr int max_team = 256;

  template <typename Body>
  void run_concurrently(int team, Body& body) {
    Region region{&call<Body>, &body};
    region.pending.store(team - 1, std::memory_order_relaxed);
    Worker* members[max_team];
    const int claimed = claim(team - 1, members);
    for (int i = claimed; i < team - 1; ++i) members[i] = nullptr;
    for (int i = 0; i < team - 1; ++i) {
      if (members[i] == nullptr) continue;
      Worker& w = *members[i];
      w.region = &region;
      w.index = i + 1;
      w.caller_cpu = current_cpu();
      w.generation.fetch_add(1, std::memory_order_seq_cst);  // publishes region and index
      if (w.sleeping.load(std::memory_order_seq_cst)) w.generation.notify_one();
    }
    inside_region() = true;
    body(0);
    // Members beyond max_team (more threads than any CPU here has) run on the caller.
    for (int i = claimed + 1; i < team; ++i) {
      body(i);
      region.pending.fetch_sub(1, std::memory_order_relaxed);
    }
    inside_region() = false;
    for (unsigned spins = 0; region.pending.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins < 4096) spin_pause();
      else std::this_thread::yield();
    }
    release(members, claimed);
  }

  /// One region: what to call, and how many workers have yet to finish their part.
  struct Region {
    void (*fn)(void*, int) = nullptr;
    void* body = nullptr;
    std::atomic<int> pending{0};
  };

  struct Worker {
    std::atomic<std::uint32_t> generation{0};  // bumped to hand the worker a region (or to stop it)
    std::atomic<bool> sleeping{false};
    Region* region = nullptr;  // written before the bump that the worker acquires
    int index = 0;
    int caller_cpu = -1;  // the CPU of the thread that last handed it a region
    bool stop = false;
    std::thread thread;
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

  /// Takes up to n (at most max_team − 1) idle workers into out, starting new ones as needed; returns how many.
  int claim(int n, Worker** out) {
    n = std::min(n, max_team - 1);
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < n; ++i) {
      if (idle_.empty()) {
        workers_.push_back(std::make_unique<Worker>());
        Worker* w = workers_.back().get();
        w->thread = std::thread([w, cpu = current_cpu()] { work(*w, cpu); });
        idle_.push_back(w);
      }
      out[i] = idle_.back();
      idle_.pop_back();
    }
    return n;
  }

  void release(Worker** members, int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < n; ++i) idle_.push_back(members[i]);
  }

  static void work(Worker& w, int starter_cpu) {
    leave_cpu(starter_cpu);
    inside_region() = true;
    std::uint32_t seen = 0;
    for (;;) {
      seen = wait_past(w, seen);
      if (w.stop) return;
      Region* region = w.region;
      region->fn(region->body, w.index);
      region->pending.fetch_sub(1, std::memory_order_acq_rel);  // the region may end now: not touched after
    }
  }

  /// Returns the worker's generation once it differs from `seen`: spins for spin_time, then sleeps.
  static std::uint32_t wait_past(Worker& w, std::uint32_t seen) {
    const auto start = std::chrono::steady_clock::now();
    for (unsigned spins = 1;; ++spins) {
      const std::uint32_t g = w.generation.load(std::memory_order_acquire);
      if (g != seen) return g;
      spin_pause();
      if (spins % 256 == 0 && std::chrono::steady_clock::now() - start > spin_time) break;
    }
    w.sleeping.store(true, std::memory_order_seq_cst);
    while (w.generation.load(std::memory_order_seq_cst) == seen) w.generation.wait(seen, std::memory_order_seq_cst);
    w.sleeping.store(false, std::memory_order_seq_cst);
    const std::uint32_t g = w.generation.load(std::memory_order_acquire);
    leave_cpu(w.caller_cpu);  // woken: the kernel may have put it beside the caller
    return g;
  }

  /// The CPU the calling thread runs on, or −1 where that is not known.
  static int current_cpu() noexcept {
#if defined(__linux__)
    return sched_getcpu();
#else
    return -1;
#endif
  }

  /// Moves this worker off `cpu` — the CPU of the thread that handed it a region — when it runs there and may run
  /// elsewhere, then lets it run anywhere it could before (the process's CPU mask is kept, nothing is pinned).
  /// Some kernels place a new or woken thread on its waker's CPU (a Firecracker VM's kernel.sched_vcpu_pack
  /// does: a new worker started beside its caller in 12 runs of 12): the caller and the worker then take turns on
  /// one CPU while the other idles, which costs a region more than it gains, and a team that spins at barriers
  /// (SpinBarrier) far more.
  static void leave_cpu(int cpu) noexcept {
#if defined(__linux__)
    cpu_set_t allowed;
    if (cpu < 0 || current_cpu() != cpu || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
    cpu_set_t others = allowed;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0) return;
    if (sched_setaffinity(0, sizeof others, &others) == 0) (void)sched_setaffinity(0, sizeof allowed, &allowed);
#else
    (void)cpu;
#endif
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<Worker*> idle_;
};

}  // namespace detail

/// A barrier for the members of one team (run_team): each arrive_and_wait() returns once all `size` members
/// have arrived, and what each wrote before arriving is visible to all after it. Members spin while they wait —
/// the phases it separates are microseconds long — and yield after a few microseconds (more members than free
/// cores would otherwise spin away the time slices of those they wait for).
class SpinBarrier {
 public:
  explicit SpinBarrier(int size) : size_(size) {
    if (size < 1) throw config_error(detail::cat("SpinBarrier: size is ", size, ", expected >= 1"));
  }
  SpinBarrier(const SpinBarrier&) = delete;
  SpinBarrier& operator=(const SpinBarrier&) = delete;

  void arrive_and_wait() noexcept {
    const std::uint32_t phase = phase_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);  // before the phase moves on: nobody arrives again until then
      phase_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (unsigned spins = 0; phase_.load(std::memory_order_acquire) == phase; ++spins) {
      if (spins < 256) detail::spin_pause();  // ~6 µs (a pause is ~25 ns on Zen 4): more than a phase's imbalance
      else std::this_thread::yield();         // a member without a core of its own: let it run
    }
  }

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<std::uint32_t> phase_{0};
  int size_;
};

/// Calls body(member) for member in [0, team) on `team` threads that run at the same time, so that they may meet
/// at a SpinBarrier; body(0) runs on the caller. Returns false without calling anything when that cannot be
/// promised (from inside a parallel region, whose nested regions run serially): the caller takes another way.
template <typename Body>
bool run_team(int team, Body&& body) {
  return detail::ThreadPool::instance().run_team(team, body);
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
