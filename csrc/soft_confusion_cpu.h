// The soft confusion matrix on the CPU (fastloss/ops/soft_confusion.py's semantics):
// S[b, l, c] = Σ_{v : y[b, v] = l} softmax(x[b, :, v])_c, and its backward, recomputing the softmax.
#pragma once

#include <cstdint>

namespace fastloss {

// x: (B, C, N) contiguous float32 (elem 4) or float64 (elem 8); labels: (B, N) int64 (labels outside [0, C) count
// nowhere and get no gradient). S: (B, C, C) doubles: per tile of voxels partial sums in double, added in tile
// order, so the result does not depend on the thread count.
void soft_confusion_forward_cpu(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t N, int elem,
                                double* S, int threads);

// G: (B, C, C) doubles (dL/dS); dx: (B, C, N) of x's type: dx_c = p_c·(G[y, c] − Σ_k p_k G[y, k]).
void soft_confusion_backward_cpu(const void* x, const int64_t* labels, const double* G, int64_t B, int64_t C,
                                 int64_t N, int elem, void* dx, int threads);

}  // namespace fastloss
