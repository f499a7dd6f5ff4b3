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

// The rows of S contracted with a class-pair weight M (C × C doubles, row-major), O(C) per voxel:
// out[b, l] = Σ_{v : y = l} w_v with w_v = Σ_c M[l, c]·p_c(v) (voxel v's Wasserstein distance, in x's type), and
// out[b, C + l] = the number of voxels of label l; out: (B, 2·C) doubles, partial sums per tile added in tile order.
// q: null, or (B, C, N) of x's type: the derivative q_c(v) = p_c(v)·(M[y_v, c] − w_v), 0 for a label outside [0, C)
// (dL/dx = dL/dW[y]·q). At most 32768 classes (std::invalid_argument above).
void soft_confusion_rows_cpu(const void* x, const int64_t* labels, const double* M, int64_t B, int64_t C, int64_t N,
                             int elem, double* out, void* q, int threads);

// The rows op's backward in place: q_c(v) *= A[b, y_v] (A: (B, C) doubles, dL/dW), turning the derivative into dx.
void soft_confusion_rows_scale_cpu(const int64_t* labels, const double* A, int64_t B, int64_t C, int64_t N, int elem,
                                   void* q, int threads);

}  // namespace fastloss
