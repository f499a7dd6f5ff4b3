// Compiled CPU kernels of the loss statistics (the CPU twin of fastloss/ops/triton_stats.py and the
// per-voxel CE of fastloss/ops/triton_topk.py).
//
// Layout: stats_cpu_kernels.inc holds the kernels; it is compiled once per instruction set
// (stats_cpu_base.cpp, stats_cpu_avx2.cpp, stats_cpu_avx512.cpp, each with its own -m flags and its own
// namespace), and stats_cpu.cpp picks one at run time (cpuid; FASTLOSS_CPU_ISA=base|avx2|avx512
// overrides it), owns the threads and reduces the per-tile partial sums in tile order. The kernels
// accumulate in explicit lanes (one native register) and reduce them by a fixed tree, so every thread
// count gives the same bits; instruction sets differ by rounding only (lane count, FMA).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastloss {

// dtype codes shared with fastloss/ops/cpu_stats.py
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3, kU8 = 4, kI8 = 5, kI16 = 6, kI32 = 7, kI64 = 8 };

// Columns of the statistics, in the order of fastloss.ops.stats.COLUMNS.
enum Column : int {
  kPG = 0, kP, kPP, kG, kGG, kAbsDiff, kSqErrPos, kSqErrNeg, kCE, kFocal, kCEPow, kMapCE, kMapP, kMapSqErr,
  kCount, kSigFocal, kAuxPG, kAuxG, kNumColumns
};

enum Activation : int { kSoftmax = 0, kSigmoid = 1, kNone = 2 };

// A (B, C, N) (or (B, N): sc unused) strided tensor: element strides, never bytes.
struct View {
  const void* data = nullptr;
  int dtype = -1;
  int64_t sb = 0, sc = 0, sn = 0;
};

struct StatsArgs {
  int64_t B = 0, C = 0, N = 0;
  View x;       // logits / probabilities (float16, bfloat16, float32, float64)
  View labels;  // (B, N) integer labels, or data == nullptr
  View soft;    // (B, C, N) soft / one-hot target, or data == nullptr
  View mask;    // (B, N) voxel weights, or data == nullptr
  View vmap;    // (B, C or 1, N) voxel map (sc = 0 for one shared channel), or data == nullptr
  // (B, N) second integer label map (its own dtype and strides) of the aux_pg / aux_g columns, or data ==
  // nullptr (both columns 0): a_c = [aux = c] (one channel: [aux = 1]) times the voxel mask m; an aux label
  // equal to ignore_index or outside [0, C) counts nowhere.
  View aux;
  int activation = kSoftmax;
  int K = 0;
  int col[kNumColumns];  // column -> index in the K output columns, or -1
  double gamma = 2.0, alpha = 0.0, ce_exponent = 0.3, log_eps = 0.0;
  bool has_alpha = false, has_ignore = false;
  int64_t ignore_index = 0;
  // Per-voxel softmax CE beside the sums (DiceTopK's TopK part from the same pass; fast path only, see
  // stats_fused_path): the forward writes −log p_y (0 at ignored voxels) into voxel_ce_out, the backward
  // adds voxel_ce_grad·∂(−log p_y)/∂x. Both (B, N) contiguous float32, or nullptr.
  float* voxel_ce_out = nullptr;
  const float* voxel_ce_grad = nullptr;
  // Region-based targets (fastloss/_validation.py region_table): with labels, channel c's target is bit c of
  // regions[label] (0 for a label >= regions_len), every label >= 0 other than ignore_index is a voxel; the
  // C <= 31 channels' bits fit the int32 the tiles hold. nullptr: class labels (g_c = [label == c]).
  const int64_t* regions = nullptr;
  int64_t regions_len = 0;
};

// Whether a column outside the fused set (pg, p, pp, g, gg, ce, count) is requested.
inline bool has_extra_columns(const StatsArgs& a) {
  const int extra[9] = {kAbsDiff, kSqErrPos, kSqErrNeg, kFocal, kCEPow, kMapCE, kMapP, kMapSqErr, kSigFocal};
  for (int k : extra)
    if (a.col[k] >= 0) return true;
  return false;
}

// The fused path: float32/16/bf16 logits, softmax, integer labels, no mask tensor, the fused columns, and
// the focal and sigmoid-focal columns with γ = 2 (MONAI's and the paper's default); two classes or more
// (one channel's foreground is label 1, which the general path reads: g = [label = 1], not [label = c]).
inline bool stats_fused_path(const StatsArgs& a) {
  if (a.C < 2) return false;
  const int extra[7] = {kAbsDiff, kSqErrPos, kSqErrNeg, kCEPow, kMapCE, kMapP, kMapSqErr};
  for (int k : extra)
    if (a.col[k] >= 0) return false;
  if ((a.col[kFocal] >= 0 || a.col[kSigFocal] >= 0) && a.gamma != 2.0) return false;
  return a.x.dtype != kF64 && a.activation == kSoftmax && a.labels.data && !a.regions && !a.mask.data;
}

// Voxels per tile: the unit of work and of the fixed-order reduction (independent of the thread count).
constexpr int kTile = 256;

// Scratch bytes one worker needs for a tile of C classes in compute type of `elem` bytes.
inline size_t stats_scratch_bytes(int64_t C, size_t elem) {
  return (static_cast<size_t>(C) * 6 + 12) * kTile * elem + 3 * kTile * sizeof(int32_t) + 256;
}

// Per-ISA entry points (stats_cpu_kernels.inc). Items are (b, tile) pairs, item = b * tiles + tile.
// double_path: x is float64 (compute and accumulate in double); otherwise float.
struct StatsKernels {
  // partial sums of items [begin, end) into part[(item - begin) * C * K + c * K + k] (double)
  void (*forward)(const StatsArgs&, int64_t begin, int64_t end, double* part, void* scratch);
  // dL/dx of items [begin, end); grad (B, C, K) contiguous in the compute type, dx like View
  void (*backward)(const StatsArgs&, const void* grad, View dx, int64_t begin, int64_t end, void* scratch);
  // per-voxel softmax CE −log p_y of items [begin, end) into ce (B, N) contiguous in the compute type
  void (*voxel_ce_forward)(const StatsArgs&, void* ce, int64_t begin, int64_t end, void* scratch);
  // dx = gce·(p − onehot(y)) at counted voxels, 0 elsewhere; gce (B, N) contiguous in the compute type
  void (*voxel_ce_backward)(const StatsArgs&, const void* gce, View dx, int64_t begin, int64_t end, void* scratch);
};

StatsKernels stats_kernels_base();
#if defined(FASTLOSS_X86_CLONES)
StatsKernels stats_kernels_avx2();
StatsKernels stats_kernels_avx512();
#endif

// Dispatch (stats_cpu.cpp). out: (B, C, K) float32, or float64 when x is float64.
void class_stats_cpu_forward(const StatsArgs& a, void* out, int threads);
void class_stats_cpu_backward(const StatsArgs& a, const void* grad, View dx, int threads);
void voxel_ce_cpu_forward(const StatsArgs& a, void* ce, int threads);
void voxel_ce_cpu_backward(const StatsArgs& a, const void* gce, View dx, int threads);
// The name of the instruction set the kernels run with ("avx512", "avx2" or "base").
const char* stats_cpu_isa();

// Sum of the k largest of m float32 values (radix select on the bits, NaN above +inf as torch.topk):
// returns sum (double), the k-th largest value, #{v > it} and #{v == it} (by key: NaNs compare equal).
struct TopkResult {
  double sum;
  float threshold;
  int64_t count_greater, count_equal;
};
TopkResult topk_select_cpu(const float* v, int64_t m, int64_t k, int threads);

// The TopK sum's (sub)gradient: w_i = grad·(1 if v_i > thr, share if v_i == thr, else 0), float32, as
// ops/topk.py's torch expression computes it (IEEE comparisons), in one parallel pass.
void topk_weights_cpu(const float* v, int64_t m, float thr, float share, float grad, float* w, int threads);

// The kernels' float16/bfloat16 conversions, for tests: kind 0 half->float, 1 float->half,
// 2 bfloat16->float, 3 float->bfloat16 (16-bit values as uint16).
void convert_halves_cpu(const void* src, void* dst, int64_t n, int kind);

}  // namespace fastloss
