// The parallel thinning on the GPU: the passes of skeleton_parallel_host.cpp (read its header comment), with
// the same per-voxel functions (skeleton_parallel.h), every batch item in one launch per pass, on the caller's
// stream.
//
// 2D: one thread per pixel; a sub-pass reads one buffer and writes the other (the image as it was when the
//     sub-pass began), two sub-passes per iteration, the result back in `out` after each iteration.
// 3D: per direction, one thread per voxel marks Lee's candidates (border voxels, no end points) into
//     `scratch`; then per parity subfield one thread per voxel of the subfield tests the marked ones (Euler
//     invariant, simple) and deletes in place: no voxel a thread reads
//     (its 26-neighbourhood) belongs to the subfield, so no thread reads a voxel another one writes.
// Whether a pass deleted anything is an int flag: each block ORs its threads' answers (__syncthreads_or) and
// one thread per block that deleted something sets the flag with an integer atomic (nothing float, and the
// image does not depend on the flag). One host synchronisation per iteration / sweep reads it back.
// All indices are int64; a thread off the end of the work does nothing but take part in the block's OR.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <vector>

#include "skeleton_parallel.h"

namespace fastloss {
namespace {

constexpr int kThreads = 256;

// the tables by value: kernel parameters (512 bytes of the 4 KiB allowed), read through the constant cache
struct ZhangTable {
  uint8_t v[256];
};
struct DeltaTable {
  int8_t v[256];
};

__global__ void binarize_kernel(const uint8_t* __restrict__ mask, uint8_t* __restrict__ out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = mask[i] != 0;
}

// Sub-pass `which` of every (H, W) image: src -> dst.
__global__ void zhang_pass_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst, int64_t batch,
                                  int64_t H, int64_t W, int which, ZhangTable table, int32_t* changed) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = H * W;
  int deleted = 0;
  if (t < batch * n) {
    const int64_t b = t / n, i = t - b * n;
    const int64_t r = i / W, c = i - r * W;
    const uint8_t* s = src + b * n;
    const uint8_t v = skel::zhang_after(s, H, W, r, c, which, table.v);
    dst[t] = v;
    deleted = v != s[i];
  }
  if (__syncthreads_or(deleted) && threadIdx.x == 0) atomicOr(changed, 1);
}

// The candidates of direction `direction` of every (D, H, W) volume: im -> candidate (0/1).
__global__ void lee_candidate_kernel(const uint8_t* __restrict__ im, uint8_t* __restrict__ candidate, int64_t batch,
                                  int64_t D, int64_t H, int64_t W, int direction) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n = D * H * W;
  if (t >= batch * n) return;
  const int64_t b = t / n, i = t - b * n;
  const int64_t p = i / (H * W), rc = i - p * (H * W);
  const int64_t r = rc / W, c = rc - r * W;
  candidate[t] = skel::is_candidate(im + b * n, D, H, W, p, r, c, direction);
}

// A direction's pass (its candidates marked in `candidate`) over the voxels of parity subfield `parity` (bit 2:
// p % 2, bit 1: r % 2, bit 0: c % 2), nP x nR x nC of them per (D, H, W) volume.
__global__ void lee_subfield_kernel(uint8_t* im, const uint8_t* __restrict__ candidate, int64_t batch, int64_t D,
                                    int64_t H, int64_t W, int parity, int64_t nP, int64_t nR, int64_t nC,
                                    DeltaTable delta, int32_t* changed) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int deleted = 0;
  if (t < batch * nP * nR * nC) {
    int64_t rest = t;
    const int64_t c = (parity & 1) + 2 * (rest % nC);
    rest /= nC;
    const int64_t r = ((parity >> 1) & 1) + 2 * (rest % nR);
    rest /= nR;
    const int64_t p = ((parity >> 2) & 1) + 2 * (rest % nP);
    const int64_t b = rest / nP;
    const int64_t i = b * (D * H * W) + (p * H + r) * W + c;
    if (candidate[i] && skel::lee_deletable(im + b * (D * H * W), D, H, W, p, r, c, delta.v)) {
      im[i] = 0;
      deleted = 1;
    }
  }
  if (__syncthreads_or(deleted) && threadIdx.x == 0) atomicOr(changed, 1);
}

// blocks for `work` threads; 0 when that is more than one launch holds
inline unsigned int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return blocks > INT_MAX ? 0u : static_cast<unsigned int>(blocks);
}

// Resets the flag, runs `enqueue` (the launches of one iteration / sweep), reads the flag back (the one host
// sync); returns 0 and sets `any`, or a CUDA error code.
template <class F>
int sweep(int32_t* flag, cudaStream_t stream, bool* any, F&& enqueue) {
  cudaError_t err = cudaMemsetAsync(flag, 0, sizeof(int32_t), stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  enqueue();
  err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  int32_t host = 0;
  err = cudaMemcpyAsync(&host, flag, sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  *any = host != 0;
  return 0;
}

}  // namespace

int skeletonize_cuda(const uint8_t* mask, uint8_t* out, uint8_t* scratch, int32_t* flag, int64_t batch,
                     const std::vector<int64_t>& shape, void* stream_handle) {
  static const skel::Tables tables = skel::make_tables();
  int64_t total = batch;
  for (const int64_t d : shape) total *= d;
  if (total == 0) return 0;
  if (blocks_for(total) == 0) return static_cast<int>(cudaErrorInvalidConfiguration);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  binarize_kernel<<<blocks_for(total), kThreads, 0, stream>>>(mask, out, total);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  bool any = true;
  if (shape.size() == 2) {
    ZhangTable table;
    for (int k = 0; k < 256; ++k) table.v[k] = tables.zhang[k];
    const int64_t H = shape[0], W = shape[1];
    while (any) {
      const int rc = sweep(flag, stream, &any, [&] {
        zhang_pass_kernel<<<blocks_for(total), kThreads, 0, stream>>>(out, scratch, batch, H, W, 1, table, flag);
        zhang_pass_kernel<<<blocks_for(total), kThreads, 0, stream>>>(scratch, out, batch, H, W, 2, table, flag);
      });
      if (rc != 0) return rc;
    }
    return 0;
  }
  DeltaTable delta;
  for (int k = 0; k < 256; ++k) delta.v[k] = tables.euler_delta[k];
  const int64_t D = shape[0], H = shape[1], W = shape[2];
  const int directions = skel::num_directions(D);
  while (any) {
    const int rc = sweep(flag, stream, &any, [&] {
      for (int direction = 0; direction < directions; ++direction) {
        lee_candidate_kernel<<<blocks_for(total), kThreads, 0, stream>>>(out, scratch, batch, D, H, W, direction);
        for (int s = 0; s < 8; ++s) {
          const int64_t nP = skel::subfield_count(D, (s >> 2) & 1), nR = skel::subfield_count(H, (s >> 1) & 1),
                        nC = skel::subfield_count(W, s & 1);
          const int64_t work = batch * nP * nR * nC;
          if (work == 0) continue;
          lee_subfield_kernel<<<blocks_for(work), kThreads, 0, stream>>>(out, scratch, batch, D, H, W, s, nP, nR, nC,
                                                                          delta, flag);
        }
      }
    });
    if (rc != 0) return rc;
  }
  return 0;
}

}  // namespace fastloss
