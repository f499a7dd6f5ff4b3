// A cache of large host buffers for the CPU kernels' outputs (the gradients dL/dx of the loss ops).
//
// Why: glibc hands every allocation over 32 MiB to mmap and every free of one back to munmap, so a
// training loop's (2, 14, 96³) float32 gradient (99 MiB) is faulted in afresh on every step: 8 ms of a
// 38 ms Dice step on this project's 2-core machine, on one thread whatever the thread count (faulting
// from two threads at once was slower still). Kept here instead, a freed gradient's pages stay mapped,
// and the next step's gradient of the same size reuses them, as PyTorch's CUDA caching allocator does on
// the GPU.
//
// Safety: a block comes back to the cache only when its owner calls release(), which the Python buffer
// object wrapping it does from its destructor, i.e. once the last tensor viewing it (autograd's and
// `.grad` included) has died. Blocks are 2 MiB aligned, sized in whole 2 MiB pages and advised to use
// transparent huge pages (Linux), then faulted in by the allocating thread, one write per page.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastloss {

struct BufferPoolInfo {
  std::size_t cached_bytes;   // bytes held in free blocks
  std::size_t cached_blocks;  // number of free blocks
  std::size_t limit_bytes;    // most bytes held free; 0: nothing is kept
  std::uint64_t hits;         // acquires served from the cache
  std::uint64_t misses;       // acquires that allocated
};

// A block of at least `bytes` bytes (bytes > 0), 2 MiB aligned; *capacity receives its size, to pass
// back to buffer_pool_release. Throws std::bad_alloc when memory runs out.
void* buffer_pool_acquire(std::size_t bytes, std::size_t* capacity);
// Hands a block back: kept for reuse while the free blocks stay within the limit (and 8 blocks), the
// least recently freed ones returned to the system first.
void buffer_pool_release(void* ptr, std::size_t capacity);
// Returns every free block to the system.
void buffer_pool_empty();
void buffer_pool_set_limit(std::size_t bytes);
BufferPoolInfo buffer_pool_info();

}  // namespace fastloss
