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

namespace fastloss {

// The whole NACL loss of integer labels in two passes (MONAI's CE + its penalty), nothing of size B·C·N kept:
// forward: pen_sums (B·C doubles) as nacl_penalty_cpu's sums and ce_sums (B doubles) = Σ_v −log softmax(x)_y over the
// voxels of item b whose label lies in [0, C) (tiles of voxels summed in lanes, the tiles in order: thread-count
// independent). backward: dx = grad_pen[b, c]·(sign(x − u) or 2(x − u)) + grad_ce[b]·(p_c − [y = c]), u and the
// softmax recomputed. Same layout and arguments as nacl_penalty_cpu.
void nacl_loss_cpu_forward(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D,
                           int nd, const std::vector<float>& weights, int64_t left, float scale, int distance, int elem,
                           double* pen_sums, double* ce_sums, int threads);
// The forward and, in the same pass (u filtered once, the softmax once), dx for the given gradient weights grad_pen and
// grad_ce (the backward's dx for those weights): for a loss linear in the two sums, whose weights the caller knows
// before the forward, the backward is then a scaling.
void nacl_loss_cpu_forward_grad(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W,
                                int64_t D, int nd, const std::vector<float>& weights, int64_t left, float scale,
                                int distance, int elem, double* pen_sums, double* ce_sums, const double* grad_pen,
                                const double* grad_ce, void* dx, int threads);
void nacl_loss_cpu_backward(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W,
                            int64_t D, int nd, const std::vector<float>& weights, int64_t left, float scale,
                            int distance, int elem, const double* grad_pen, const double* grad_ce, void* dx,
                            int threads);

}  // namespace fastloss
