// See buffer_pool.h.
#include "buffer_pool.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastloss {
namespace {

constexpr std::size_t kPage = std::size_t(1) << 21;  // 2 MiB: a transparent huge page on x86-64 and arm64
constexpr std::size_t kMaxFreeBlocks = 8;

struct Block {
  void* ptr;
  std::size_t bytes;
};

struct Pool {
  std::mutex mutex;
  std::vector<Block> free_blocks;  // oldest first
  std::size_t free_bytes = 0;
  std::size_t limit = std::size_t(1) << 30;
  std::uint64_t hits = 0, misses = 0;
};

// Never destroyed: tensors may hand blocks back while the interpreter shuts down.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

void* system_alloc(std::size_t bytes) {
#if defined(_WIN32)
  void* p = _aligned_malloc(bytes, kPage);
#else
  void* p = std::aligned_alloc(kPage, bytes);  // bytes is a multiple of kPage, as aligned_alloc asks
#endif
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Advice, not a requirement: where THP is off the block works the same in 4 KiB pages.
  if (madvise(p, bytes, MADV_HUGEPAGE) == 0) {
    for (std::size_t off = 0; off < bytes; off += kPage) static_cast<volatile char*>(p)[off] = 0;
  }
#endif
  return p;
}

void system_free(void* p) {
#if defined(_WIN32)
  _aligned_free(p);
#else
  std::free(p);
#endif
}

// Frees the oldest blocks until the free list fits the limit; the caller holds the mutex and frees the
// returned blocks after dropping it.
std::vector<Block> trim_locked(Pool& P) {
  std::vector<Block> out;
  std::size_t drop = 0;
  while (drop < P.free_blocks.size() &&
         (P.free_bytes > P.limit || P.free_blocks.size() - drop > kMaxFreeBlocks)) {
    P.free_bytes -= P.free_blocks[drop].bytes;
    out.push_back(P.free_blocks[drop]);
    ++drop;
  }
  P.free_blocks.erase(P.free_blocks.begin(), P.free_blocks.begin() + static_cast<std::ptrdiff_t>(drop));
  return out;
}

}  // namespace

void* buffer_pool_acquire(std::size_t bytes, std::size_t* capacity) {
  if (bytes == 0 || bytes > (std::size_t(-1) - kPage)) throw std::bad_alloc();
  const std::size_t need = (bytes + kPage - 1) / kPage * kPage;
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> lock(P.mutex);
    // the smallest free block that fits and wastes at most a quarter of it: a loop's gradients of one
    // size find theirs, and a small request does not pin a large block
    std::size_t best = P.free_blocks.size();
    for (std::size_t i = 0; i < P.free_blocks.size(); ++i) {
      const std::size_t b = P.free_blocks[i].bytes;
      if (b >= need && b - need <= b / 4 && (best == P.free_blocks.size() || b < P.free_blocks[best].bytes))
        best = i;
    }
    if (best < P.free_blocks.size()) {
      Block blk = P.free_blocks[best];
      P.free_blocks.erase(P.free_blocks.begin() + static_cast<std::ptrdiff_t>(best));
      P.free_bytes -= blk.bytes;
      ++P.hits;
      *capacity = blk.bytes;
      return blk.ptr;
    }
    ++P.misses;
  }
  void* p = system_alloc(need);
  *capacity = need;
  return p;
}

void buffer_pool_release(void* ptr, std::size_t capacity) {
  if (ptr == nullptr) return;
  Pool& P = pool();
  std::vector<Block> drop;
  {
    std::lock_guard<std::mutex> lock(P.mutex);
    if (capacity <= P.limit) {
      P.free_blocks.push_back({ptr, capacity});
      P.free_bytes += capacity;
      ptr = nullptr;
    }
    drop = trim_locked(P);
  }
  if (ptr != nullptr) system_free(ptr);
  for (const Block& b : drop) system_free(b.ptr);
}

void buffer_pool_empty() {
  Pool& P = pool();
  std::vector<Block> drop;
  {
    std::lock_guard<std::mutex> lock(P.mutex);
    drop.swap(P.free_blocks);
    P.free_bytes = 0;
  }
  for (const Block& b : drop) system_free(b.ptr);
}

void buffer_pool_set_limit(std::size_t bytes) {
  Pool& P = pool();
  std::vector<Block> drop;
  {
    std::lock_guard<std::mutex> lock(P.mutex);
    P.limit = bytes;
    drop = trim_locked(P);
  }
  for (const Block& b : drop) system_free(b.ptr);
}

BufferPoolInfo buffer_pool_info() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mutex);
  return {P.free_bytes, P.free_blocks.size(), P.limit, P.hits, P.misses};
}

}  // namespace fastloss
