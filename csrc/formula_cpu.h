// The loss formula on the (B, C, K) statistics and its derivative dL/dstats, in one call: the CPU twin of
// fastloss/ops/triton_formula.py's _formula_kernel (same configuration, same formulas; see that file for
// the derivations). Computed in double from float32 statistics; the loss and dL/dstats are stored as float32.
#pragma once

#include <cstdint>
#include <vector>

namespace fastloss {

// ints: region (0 none, 1 dice, 2 jaccard, 3 tversky, 4 generalized Dice: this twin only), first_class, batch,
//       region_mean, i_tp, i_ps, i_gs, dist (0 none, 1 ce, 2 focal), dist_mean, ce_weighted_den, focal_masked,
//       i_ce, i_g, i_count, i_focal, gd_weight (0 uniform, 1 simple, 2 square), gd_relative, gd_f32_weights
// floats: smooth_nr, smooth_dr, alpha, beta, lambda_region, lambda_dist, region_numel, dist_divisor, eps
// (triton_formula.make_config's order). stats: (B, C, K) contiguous; region_weight: C − first_class values
// at rw_stride (nullptr: 1); dist_weight: C values at dw_stride (nullptr: 1). dstats: (B, C, K), every
// entry written (0 where the loss does not read it). Returns the loss. Throws std::invalid_argument on a
// malformed configuration (a column index outside [0, K) that the formula reads).
float loss_formula_cpu(const float* stats, int64_t B, int64_t C, int64_t K, const float* region_weight,
                       int64_t rw_stride, const float* dist_weight, int64_t dw_stride,
                       const std::vector<int64_t>& ints, const std::vector<double>& floats, float* dstats);

}  // namespace fastloss
