// Exact Euclidean distance transform on the GPU: the separable passes of edt_1d.h (the same code as the
// CPU), one thread per line, every batch volume in one launch per pass, on the caller's stream.
//
// Pass 1: binary two-scan along the last (contiguous) axis, read straight from the uint8 mask.
// Passes 2..: parabola envelopes along the other axes (last to first). Their lines have stride `inner`,
// so neighbouring threads (neighbouring i) touch neighbouring addresses: loads and stores coalesce.
// The envelope of line t lives in scratch at [k * L + t] (L lines in the pass, k the envelope slot):
// a float32 value (the f it was rooted at, exact since f is float32) and an int32 root. Breakpoints are
// recomputed from neighbouring roots in float64 (bit-identical to the ones the construction compared
// against), which keeps scratch at 2 words per voxel. All offsets are 64-bit.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "edt.h"
#include "edt_1d.h"

namespace fastloss {
namespace {

constexpr int kThreads = 128;

struct DeviceEnv {
  float* fv;
  int32_t* vv;
  int64_t L, t;
  double inv_s2;
  __device__ __forceinline__ void set(int64_t k, int64_t v, double f, double /*z*/) {
    vv[k * L + t] = static_cast<int32_t>(v);
    fv[k * L + t] = static_cast<float>(f);
  }
  __device__ __forceinline__ int64_t v(int64_t k) const { return vv[k * L + t]; }
  __device__ __forceinline__ double f(int64_t k) const { return static_cast<double>(fv[k * L + t]); }
  __device__ __forceinline__ double z(int64_t k) const {
    if (k == 0) return -FL_INF_D;
    return edt1d::intersect(v(k - 1), f(k - 1), v(k), f(k), inv_s2);
  }
};

// Lines of length n along the contiguous last axis; `lines` of them in all.
__global__ void binary_last_axis_kernel(const uint8_t* __restrict__ mask, float* __restrict__ out, int64_t lines,
                                        int64_t n, double s, bool take_sqrt) {
  const int64_t line = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (line >= lines) return;
  const uint8_t* m = mask + line * n;
  float* o = out + line * n;
  edt1d::binary_line(
      n, s, take_sqrt, [m](int64_t i) { return m[i] == 0; }, [o](int64_t i) { return o[i]; },
      [o](int64_t i, float v) { o[i] = v; });
}

// Lines (o, i), o < outer, i < inner, start at o*n*inner + i with stride inner.
__global__ void parabola_kernel(float* out, float* env_f, int32_t* env_v, int64_t outer, int64_t n, int64_t inner,
                                double s, bool take_sqrt) {
  const int64_t L = outer * inner;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= L) return;
  const int64_t o = t / inner, i = t - o * inner;
  float* base = out + o * n * inner + i;
  DeviceEnv env{env_f, env_v, L, t, 1.0 / (s * s)};
  edt1d::parabola_line(
      n, s, take_sqrt, [base, inner](int64_t q) { return static_cast<double>(base[q * inner]); },
      [base, inner](int64_t q, float v) { base[q * inner] = v; }, env);
}

inline unsigned int blocks_for(int64_t work) { return static_cast<unsigned int>((work + kThreads - 1) / kThreads); }

}  // namespace

int edt_cuda(const uint8_t* mask, float* out, void* scratch, int64_t batch, const std::vector<int64_t>& shape,
             const std::vector<double>& spacing, bool squared, void* stream_handle) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  int64_t total = batch;
  for (int64_t d : shape) total *= d;
  if (total == 0) return 0;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  float* env_f = reinterpret_cast<float*>(scratch);
  int32_t* env_v = reinterpret_cast<int32_t*>(env_f + total);

  const int64_t last = shape[nd - 1];
  const int64_t lines = total / last;
  binary_last_axis_kernel<<<blocks_for(lines), kThreads, 0, stream>>>(mask, out, lines, last, spacing[nd - 1],
                                                                       !squared && nd == 1);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  int64_t inner = last;
  for (int64_t a = nd - 2; a >= 0; --a) {
    const int64_t n = shape[a];
    const int64_t outer = total / (n * inner);
    parabola_kernel<<<blocks_for(outer * inner), kThreads, 0, stream>>>(out, env_f, env_v, outer, n, inner, spacing[a],
                                                                        !squared && a == 0);
    err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
    inner *= n;
  }
  return 0;
}

}  // namespace fastloss
