// NACL's neighbourhood penalty on the CPU (fastloss/ops/neighbourhood.py's semantics): for each (b, c) plane, the
// indicator of label c filtered by a separable zero-padded kernel in float32 (MONAI's float32 one-hot and filter),
// u, then Σ |x − u| (distance 1) or Σ (x − u)² (distance 2) over the plane, and optionally the derivative
// sign(x − u) or 2(x − u) in x's dtype. One thread per plane at a time, each plane's sum in double in a fixed
// order: results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <vector>

namespace fastloss {

// x: (B, C, H, W, D) contiguous float32 (elem 4) or float64 (elem 8); labels: (B, H, W, D) int64, any value
// (labels outside [0, C) are in no class). weights: the 1D kernel applied along every spatial axis (nd of them,
// D = 1 in 2D), starting `left` voxels before the centre; scale multiplies the filtered value (in float32).
// sums: B·C doubles. deriv: B·C·N values of x's type, or nullptr.
void nacl_penalty_cpu(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D,
                      int nd, const std::vector<float>& weights, int64_t left, float scale, int distance, int elem,
                      double* sums, void* deriv, int threads);

}  // namespace fastloss
