// The soft skeleton of clDice on the CPU (fastloss/ops/soft_skeleton.py's semantics: MONAI's soft_skel,
// erosion = directional 3-voxel min pools, dilation = 3x3x3 max pool, relu updates, iters + 1 steps).
// Images are R contiguous planes of H x W x D values (D = 1 for a 2D image), float32 (elem 4) or float64
// (elem 8). Planes are spread over `threads` threads; each plane's result does not depend on their number.
// Values must be finite for MONAI's results (the Python layer sends other input to the torch backend); any
// value is read and written inside the plane only.
#pragma once

#include <cstdint>

namespace fastloss {

// out = soft_skel(x, iters)
// nd: 2 (MONAI's 2D erosion, D must be 1) or 3 (its 3D erosion: three directional pools).
void soft_skeleton_forward_cpu(const void* x, void* out, int64_t R, int64_t H, int64_t W, int64_t D, int nd,
                               int iters, int elem, int threads);

// grad_in = (d soft_skel(x, iters) / dx)^T grad_out, recomputing the iteration (checkpoints every
// ceil(sqrt(iters + 1)) steps, held per plane while the plane's backward runs; nothing kept from the forward).
void soft_skeleton_backward_cpu(const void* x, const void* grad_out, void* grad_in, int64_t R, int64_t H, int64_t W,
                                int64_t D, int nd, int iters, int elem, int threads);

}  // namespace fastloss
