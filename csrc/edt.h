// Entry points of the exact Euclidean distance transform (see edt_1d.h for the maths).
#pragma once

#include <cstdint>
#include <vector>

namespace fastloss {

// Squared (or plain, if !squared) EDT of `batch` contiguous volumes of shape `shape` (1 to 3 dims,
// C order), read from a uint8 mask (non-zero = foreground) into float32 `out` (same layout). Distance to
// the nearest zero voxel, axes scaled by `spacing`; a volume without zeros is +inf everywhere.
// threads <= 0 means std::thread::hardware_concurrency().
void edt_cpu(const uint8_t* mask, float* out, int64_t batch, const std::vector<int64_t>& shape,
             const std::vector<double>& spacing, bool squared, int threads);

#if defined(FASTLOSS_WITH_CUDA)
// Same on the GPU, enqueued on `stream` (a cudaStream_t) without synchronising. `scratch` must hold
// 2 * batch * prod(shape) 32-bit words of device memory (the parabola envelopes). Returns a CUDA error
// code (0 on success), checked only for launch errors.
int edt_cuda(const uint8_t* mask, float* out, void* scratch, int64_t batch, const std::vector<int64_t>& shape,
             const std::vector<double>& spacing, bool squared, void* stream);
#endif

}  // namespace fastloss
