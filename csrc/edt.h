// Entry points of the compiled CPU/CUDA code: the exact Euclidean distance transform (see edt_1d.h for the
// maths) and the mask helpers of the surface metrics.
#pragma once

#include <cstdint>
#include <vector>

#include "mask_view.h"

namespace fastloss {

// Spacings: the transform is homogeneous (edt(mask, c·s) = c·edt(mask, s)), and its passes keep squared
// distances in float32 between them, which overflow above ~3.4e38 and lose their precision (or become 0,
// which later passes read as background) below ~1.2e-38. When a stored square could leave that range
// (an axis's extent above 2^62 or a step below 2^-60), the spacings are divided by a power of two 2^e
// (exactly) that brings every extent below 2^62 and every step above 2^-60, and the results are scaled
// back by 2^e (2^2e when squared) in double and rounded once to float32: the values of the exact
// transform, rounded to float32 (inf where they exceed its range). Spacings for which no such 2^e exists
// (largest extent / smallest spacing above 2^122) are refused (std::invalid_argument).
constexpr double kSpacingExtentHi = 0x1p62, kSpacingStepLo = 0x1p-60;
struct SpacingScale {
  std::vector<double> spacing;  // what the passes use
  double scale;                 // results times this (squared: its square); 1 when spacing is as given
};
SpacingScale normalise_spacing(const std::vector<double>& spacing, const std::vector<int64_t>& shape);
// out[i] *= scale (squared: scale^2), computed in double and rounded once; nothing when scale == 1.
void scale_distances(float* out, int64_t n, double scale, bool squared, int threads);

// Squared (or plain, if !squared) EDT of `batch` contiguous volumes of shape `shape` (1 to 3 dims,
// C order), read from a uint8 mask (non-zero = foreground) into float32 `out` (same layout). Distance to
// the nearest zero voxel, axes scaled by `spacing`; a volume without zeros is +inf everywhere.
// threads <= 0 means std::thread::hardware_concurrency().
void edt_cpu(const uint8_t* mask, float* out, int64_t batch, const std::vector<int64_t>& shape,
             const std::vector<double>& spacing, bool squared, int threads);

// The EDT read at query voxels only: out[k] = edt(mask)[k-th non-zero voxel of query, C order] for the
// `batch` volumes of `query` (same layout as mask); with features_nonzero, distances to the nearest non-zero
// of mask instead of the nearest zero. Distances above max_distance (compared in float32; +inf for none)
// are returned as +inf. `capacity` must equal the number of non-zero query voxels (checked before anything
// is written). Cheaper than the full transform when the queries are few and near features of the mask
// (see edt_query_cpu.cpp); exact either way.
void edt_query_cpu(const uint8_t* mask, const uint8_t* query, float* out, int64_t capacity, int64_t batch,
                   const std::vector<int64_t>& shape, const std::vector<double>& spacing, bool features_nonzero,
                   double max_distance, int threads);

// Value check and per-(b, c) bounding box of p | g for two masks (B, C, n[0], n[1], n[2]) (see mask_view.h):
// boxes[(b*C + c)*6 + 2a], [.. + 2a + 1] = first index and one past the last along spatial axis a where p or g
// is non-zero (0, 0 for an empty volume); bad[0], bad[1] = how many rows (along the last axis) of p, g hold a
// value other than 0 and 1 (0 for valid masks).
void mask_boxes_cpu(const MaskView& p, const MaskView& g, int64_t B, int64_t C, const int64_t n[3], int64_t* boxes,
                    int64_t bad[2], int threads);

// Border voxels (MONAI's get_mask_edges) of volume (b, c) of m inside the box [lo, hi) (which must hold every
// non-zero of that volume), written to out as a contiguous uint8 box; nd = number of real spatial axes (the
// last nd of the three). Returns the number of border voxels.
int64_t mask_border_cpu(const MaskView& m, int64_t b, int64_t c, const int64_t lo[3], const int64_t hi[3], int nd,
                        uint8_t* out, int threads);

#if defined(FASTLOSS_WITH_CUDA)
// Same on the GPU, enqueued on `stream` (a cudaStream_t) without synchronising. `scratch` must hold
// 2 * batch * prod(shape) 32-bit words of device memory (the parabola envelopes). Returns a CUDA error
// code (0 on success), checked only for launch errors.
int edt_cuda(const uint8_t* mask, float* out, void* scratch, int64_t batch, const std::vector<int64_t>& shape,
             const std::vector<double>& spacing, bool squared, void* stream);
#endif

}  // namespace fastloss
