// The parallel loop of every CPU kernel (EDT, metrics helpers, loss statistics).
//
// Built with OpenMP (FASTLOSS_OPENMP, the default where CMake finds it), the loop runs on the OpenMP
// runtime's thread pool: the same libgomp and the same pool as torch's CPU ops in this process, so that
// torch's workers, which spin for a while after each parallel op, pick up this work instead of competing
// with threads of our own for the cores. Without OpenMP it starts std::threads per call.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(FASTLOSS_OPENMP)
#include <omp.h>
#endif

namespace fastloss {

// Runs fn(begin, end) over [0, n) on `threads` threads (the caller's among them). Work is handed out in
// chunks of `grain` items from a shared counter, so items that cost more (long runs of foreground, far
// queries) do not leave one thread waiting on another; each item is processed by exactly one fn call.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn fn) {
  if (n <= 0) return;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  if (t == 1) {
    fn(int64_t(0), n);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, n / (t * 16));
#if defined(FASTLOSS_OPENMP)
  if (!omp_in_parallel()) {
    const int64_t chunks = (n + grain - 1) / grain;
#pragma omp parallel for num_threads(static_cast<int>(t)) schedule(dynamic, 1)
    for (int64_t i = 0; i < chunks; ++i) fn(i * grain, std::min(n, (i + 1) * grain));
    return;
  }
#endif
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (;;) {
      const int64_t begin = next.fetch_add(grain, std::memory_order_relaxed);
      if (begin >= n) return;
      fn(begin, std::min(n, begin + grain));
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t - 1));
  for (int64_t i = 1; i < t; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

// threads <= 0 means every hardware thread.
inline int resolve_threads(int threads) {
  return threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace fastloss
