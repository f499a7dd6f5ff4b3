// The parallel loop of every CPU kernel (EDT, metrics helpers, loss statistics).
//
// Built with OpenMP (FASTLOSS_OPENMP, the default where CMake finds it), the loop runs on the OpenMP
// runtime's thread pool: the same libgomp and the same pool as torch's CPU ops in this process, so that
// torch's workers, which spin for a while after each parallel op, pick up this work instead of competing
// with threads of our own for the cores. Without OpenMP it starts std::threads per call.
//
// Exceptions: a C++ exception must not leave an OpenMP region or a std::thread (either ends in
// std::terminate, i.e. SIGABRT for the whole interpreter). Every fn call is wrapped: the first exception
// is kept, the chunks not yet started are skipped, and it is rethrown on the calling thread once every
// worker is done, so that an allocation failure inside a kernel (a tile buffer, a row buffer) reaches
// Python as a MemoryError (pybind11 translates std::bad_alloc) and the process lives on.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(FASTLOSS_OPENMP)
#include <omp.h>
#endif

namespace fastloss {

// The most threads one kernel call starts, whatever it is asked for: more than this never speeds a
// kernel up, and each thread costs a stack (8 MiB of address space by default), so that a mistaken
// request (threads=30000) would otherwise start thousands of threads, or kill the process inside the
// OpenMP runtime when they do not fit.
constexpr int kMaxThreads = 1024;

// The first exception thrown by any of a loop's fn calls, rethrown after the loop.
class ErrorSlot {
 public:
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  template <class F>
  void run(F&& f) noexcept {
    if (failed()) return;  // skip the rest of the work once something failed
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  void rethrow() {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

// Runs fn(begin, end) over [0, n) on `threads` threads (the caller's among them; at most kMaxThreads).
// Work is handed out in chunks of `grain` items from a shared counter, so items that cost more (long
// runs of foreground, far queries) do not leave one thread waiting on another; each item is processed by
// exactly one fn call. If a call throws, the remaining chunks are skipped and the first exception is
// rethrown here after every thread has finished (the output is then incomplete).
template <class Fn>
void parallel_for(int64_t n, int threads, Fn fn) {
  if (n <= 0) return;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(std::min(threads, kMaxThreads), n));
  if (t == 1) {
    fn(int64_t(0), n);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, n / (t * 16));
  ErrorSlot error;
#if defined(FASTLOSS_OPENMP)
  if (!omp_in_parallel()) {
    const int64_t chunks = (n + grain - 1) / grain;
#pragma omp parallel for num_threads(static_cast<int>(t)) schedule(dynamic, 1)
    for (int64_t i = 0; i < chunks; ++i) error.run([&] { fn(i * grain, std::min(n, (i + 1) * grain)); });
    error.rethrow();
    return;
  }
#endif
  std::atomic<int64_t> next{0};
  auto worker = [&]() noexcept {
    for (;;) {
      if (error.failed()) return;
      const int64_t begin = next.fetch_add(grain, std::memory_order_relaxed);
      if (begin >= n) return;
      error.run([&] { fn(begin, std::min(n, begin + grain)); });
    }
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(static_cast<size_t>(t - 1));
    for (int64_t i = 1; i < t; ++i) pool.emplace_back(worker);
  } catch (...) {
    // no more threads to be had (std::system_error, std::bad_alloc): the ones started and this one
    // share the work, which the shared counter hands out whatever their number
  }
  worker();
  for (auto& th : pool) th.join();
  error.rethrow();
}

// threads <= 0 means every hardware thread; any count is capped at kMaxThreads.
inline int resolve_threads(int threads) {
  const int t = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::min(t, kMaxThreads);
}

}  // namespace fastloss
