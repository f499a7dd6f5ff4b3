// A minimal thread pool-free parallel loop for the CPU kernels (edt_cpu.cpp, edt_query_cpu.cpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

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
