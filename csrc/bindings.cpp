// pybind11 module fastloss._C, imported by fastloss/_ext.py only. It links neither libtorch nor numpy: the
// Python layer (fastloss/distance.py, fastloss/metrics/, fastloss/skeleton.py and the ops' cpu_*.py files)
// validates inputs and passes raw data pointers (integers), sizes, strides, spacing and a CUDA stream handle.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "buffer_pool.h"
#include "edt.h"
#include "formula_cpu.h"
#include "lovasz_cpu.h"
#include "skeleton_cpu.h"
#include "skeleton_parallel.h"
#include "nacl_cpu.h"
#include "soft_confusion_cpu.h"
#include "soft_skeleton_cpu.h"
#include "stats_cpu.h"

namespace py = pybind11;

#ifndef FASTLOSS_VERSION
#define FASTLOSS_VERSION "0.1.0"
#endif

namespace {

void check_geometry(int64_t batch, const std::vector<int64_t>& shape, const std::vector<double>& spacing) {
  if (shape.empty() || shape.size() > 3)
    throw std::invalid_argument("expected 1 to 3 spatial dims, got " + std::to_string(shape.size()));
  if (spacing.size() != shape.size())
    throw std::invalid_argument("expected " + std::to_string(shape.size()) + " spacing values, got " +
                                std::to_string(spacing.size()));
  if (batch < 1) throw std::invalid_argument("expected batch >= 1, got " + std::to_string(batch));
  for (int64_t s : shape)
    if (s < 1) throw std::invalid_argument("expected positive sizes, got " + std::to_string(s));
  for (double s : spacing)
    if (!(s > 0.0) || s == std::numeric_limits<double>::infinity())
      throw std::invalid_argument("expected positive finite spacing, got " + std::to_string(s));
  (void)fastloss::normalise_spacing(spacing, shape);  // refuses spacings too far apart for float32 squares
}

// (data_ptr, word_size, zero_mask, one_bits, [5 strides in elements]) -> MaskView
fastloss::MaskView mask_view(const py::tuple& t) {
  if (t.size() != 5) throw std::invalid_argument("a mask view is (data_ptr, word_size, zero_mask, one_bits, strides)");
  fastloss::MaskView v{};
  v.data = reinterpret_cast<const void*>(t[0].cast<std::uintptr_t>());
  v.word_size = t[1].cast<int64_t>();
  v.zero_mask = t[2].cast<uint64_t>();
  v.one_bits = t[3].cast<uint64_t>();
  const auto strides = t[4].cast<std::vector<int64_t>>();
  if (!v.data) throw std::invalid_argument("null data pointer");
  if (v.word_size != 1 && v.word_size != 2 && v.word_size != 4 && v.word_size != 8)
    throw std::invalid_argument("word size must be 1, 2, 4 or 8, got " + std::to_string(v.word_size));
  if (strides.size() != 5) throw std::invalid_argument("expected 5 strides");
  for (int i = 0; i < 5; ++i) v.strides[i] = strides[static_cast<size_t>(i)];
  return v;
}


// (data_ptr, dtype code, stride_b, stride_c, stride_n) in elements -> View; None -> empty view
fastloss::View tensor_view(const py::object& o) {
  fastloss::View v;
  if (o.is_none()) return v;
  const auto t = o.cast<py::tuple>();
  if (t.size() != 5) throw std::invalid_argument("a tensor view is (data_ptr, dtype, stride_b, stride_c, stride_n)");
  v.data = reinterpret_cast<const void*>(t[0].cast<std::uintptr_t>());
  v.dtype = t[1].cast<int>();
  v.sb = t[2].cast<int64_t>();
  v.sc = t[3].cast<int64_t>();
  v.sn = t[4].cast<int64_t>();
  if (!v.data) throw std::invalid_argument("null data pointer");
  if (v.dtype < fastloss::kF32 || v.dtype > fastloss::kI64)
    throw std::invalid_argument("unknown dtype code " + std::to_string(v.dtype));
  return v;
}

// A region target's label-to-regions table (fastloss/_validation.py region_table): a contiguous int64 vector of
// regions_len >= 1 entries, beside integer labels, at most 31 channels (the tiles hold the bits as int32).
void set_regions(fastloss::StatsArgs& a, const py::object& regions, int64_t regions_len) {
  if (regions.is_none()) return;
  const fastloss::View r = tensor_view(regions);
  if (!a.labels.data) throw std::invalid_argument("a region table needs integer labels");
  if (r.dtype != fastloss::kI64 || r.sn != 1) throw std::invalid_argument("the region table must be contiguous int64");
  if (regions_len < 1) throw std::invalid_argument("the region table must have at least one entry");
  if (a.C > 31) throw std::invalid_argument("region targets have at most 31 channels");
  a.regions = static_cast<const int64_t*>(r.data);
  a.regions_len = regions_len;
}

// The aux label map of the aux_pg / aux_g columns (stats_cpu.h StatsArgs::aux): a (B, N) view of integers.
void set_aux(fastloss::StatsArgs& a, const py::object& aux) {
  if (aux.is_none()) return;
  a.aux = tensor_view(aux);
  if (a.aux.dtype < fastloss::kU8) throw std::invalid_argument("aux labels must be integers");
}

// The StatsArgs of one call; the Python layer (fastloss/ops/cpu_stats.py) has checked shapes, dtypes and
// devices; this re-checks what would make a kernel read or write out of bounds.
fastloss::StatsArgs stats_args(const py::object& x, const py::object& labels, const py::object& soft,
                               const py::object& mask, const py::object& vmap, int64_t B, int64_t C, int64_t N,
                               int activation, const std::vector<int>& cols, double gamma, const py::object& alpha,
                               double ce_exponent, double log_eps, const py::object& ignore_index) {
  fastloss::StatsArgs a;
  if (B < 1 || C < 1 || N < 1) throw std::invalid_argument("expected B, C, N >= 1");
  a.B = B;
  a.C = C;
  a.N = N;
  a.x = tensor_view(x);
  if (!a.x.data) throw std::invalid_argument("x is required");
  if (a.x.dtype > fastloss::kF64) throw std::invalid_argument("x must be a floating dtype");
  a.labels = tensor_view(labels);
  a.soft = tensor_view(soft);
  a.mask = tensor_view(mask);
  a.vmap = tensor_view(vmap);
  if ((a.labels.data == nullptr) == (a.soft.data == nullptr))
    throw std::invalid_argument("exactly one of labels and soft is required");
  if (a.labels.data && a.labels.dtype < fastloss::kU8) throw std::invalid_argument("labels must be integers");
  if (activation < fastloss::kSoftmax || activation > fastloss::kNone) throw std::invalid_argument("bad activation");
  a.activation = activation;
  if (cols.size() != fastloss::kNumColumns) throw std::invalid_argument("expected one index per column");
  int K = 0;
  for (int i = 0; i < fastloss::kNumColumns; ++i) {
    a.col[i] = cols[static_cast<size_t>(i)];
    if (a.col[i] >= 0) ++K;
  }
  for (int i = 0; i < fastloss::kNumColumns; ++i)
    if (a.col[i] >= K) throw std::invalid_argument("column index out of range");
  if (K == 0) throw std::invalid_argument("expected at least one column");
  const bool uses_map = a.col[fastloss::kMapCE] >= 0 || a.col[fastloss::kMapP] >= 0 || a.col[fastloss::kMapSqErr] >= 0;
  if (uses_map && !a.vmap.data) throw std::invalid_argument("map columns need a voxel map");
  a.K = K;
  a.gamma = gamma;
  a.has_alpha = !alpha.is_none();
  a.alpha = a.has_alpha ? alpha.cast<double>() : 0.0;
  a.ce_exponent = ce_exponent;
  a.log_eps = log_eps;
  // ignore_index: any Python int. One outside int64 (2**63, -2**63 - 1) equals no label of any integer
  // dtype, so it ignores nothing (as the torch backend's comparison finds).
  a.has_ignore = false;
  a.ignore_index = 0;
  if (!ignore_index.is_none()) {
    // any integer (numpy's too, through __index__); a float or anything else is a TypeError
    const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(ignore_index.ptr()));
    if (!index) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (overflow == 0) {
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      a.has_ignore = true;
      a.ignore_index = static_cast<int64_t>(v);
    }
  }
  return a;
}

std::vector<int> all_columns_off() { return std::vector<int>(fastloss::kNumColumns, -1); }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastloss compiled kernels: exact Euclidean distance transform (CPU, and CUDA when built)";
  m.attr("__version__") = FASTLOSS_VERSION;

  m.def(
      "edt_cpu",
      [](std::uintptr_t mask, std::uintptr_t out, int64_t batch, std::vector<int64_t> shape,
         std::vector<double> spacing, bool squared, int threads) {
        check_geometry(batch, shape, spacing);
        if (!mask || !out) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        fastloss::edt_cpu(reinterpret_cast<const uint8_t*>(mask), reinterpret_cast<float*>(out), batch, shape,
                          spacing, squared, threads);
      },
      py::arg("mask_ptr"), py::arg("out_ptr"), py::arg("batch"), py::arg("shape"), py::arg("spacing"),
      py::arg("squared"), py::arg("threads"),
      "Squared (or plain) EDT of `batch` contiguous uint8 volumes of `shape` into contiguous float32 `out`.");

  m.def(
      "edt_query_cpu",
      [](std::uintptr_t mask, std::uintptr_t query, std::uintptr_t out, int64_t capacity, int64_t batch,
         std::vector<int64_t> shape, std::vector<double> spacing, bool features_nonzero, double max_distance,
         int threads) {
        check_geometry(batch, shape, spacing);
        if (!(max_distance >= 0.0)) throw std::invalid_argument("expected max_distance >= 0 (or inf)");
        if (capacity < 0) throw std::invalid_argument("expected capacity >= 0, got " + std::to_string(capacity));
        if (!mask || !query || (capacity > 0 && !out)) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        fastloss::edt_query_cpu(reinterpret_cast<const uint8_t*>(mask), reinterpret_cast<const uint8_t*>(query),
                                reinterpret_cast<float*>(out), capacity, batch, shape, spacing, features_nonzero,
                                max_distance, threads);
      },
      py::arg("mask_ptr"), py::arg("query_ptr"), py::arg("out_ptr"), py::arg("capacity"), py::arg("batch"),
      py::arg("shape"), py::arg("spacing"), py::arg("features_nonzero"), py::arg("max_distance"), py::arg("threads"),
      "EDT of `batch` contiguous uint8 volumes read at the non-zero voxels of the uint8 `query` (same layout), "
      "in C order, into float32 `out` of `capacity` (= number of query voxels) values.");

  m.def(
      "edt_normalise_spacing",
      [](std::vector<double> spacing, std::vector<int64_t> shape) {
        if (spacing.size() != shape.size()) throw std::invalid_argument("expected one spacing per spatial dim");
        const fastloss::SpacingScale r = fastloss::normalise_spacing(spacing, shape);
        return py::make_tuple(r.spacing, r.scale);
      },
      py::arg("spacing"), py::arg("shape"),
      "(spacing the passes use, scale): spacings whose float32 squares could overflow or underflow divided by a "
      "power of two, the distances to be multiplied by it afterwards (see csrc/edt.h; edt_cpu and edt_query_cpu "
      "do so themselves, edt_cuda does not).");

  m.def(
      "mask_boxes_cpu",
      [](py::tuple p, py::tuple g, int64_t B, int64_t C, std::vector<int64_t> spatial, std::uintptr_t boxes,
         int threads) {
        const fastloss::MaskView pv = mask_view(p), gv = mask_view(g);
        if (spatial.size() != 3) throw std::invalid_argument("expected 3 spatial sizes (padded with 1s)");
        if (B < 1 || C < 1) throw std::invalid_argument("expected B, C >= 1");
        for (int64_t s : spatial)
          if (s < 1) throw std::invalid_argument("expected positive spatial sizes, got " + std::to_string(s));
        if (!boxes) throw std::invalid_argument("null data pointer");
        int64_t bad[2] = {0, 0};
        {
          py::gil_scoped_release release;
          fastloss::mask_boxes_cpu(pv, gv, B, C, spatial.data(), reinterpret_cast<int64_t*>(boxes), bad, threads);
        }
        return py::make_tuple(bad[0], bad[1]);
      },
      py::arg("p"), py::arg("g"), py::arg("B"), py::arg("C"), py::arg("spatial"), py::arg("boxes_ptr"),
      py::arg("threads"),
      "Per-(b, c) boxes of p | g into int64 boxes (B*C, 6); returns the numbers of rows of p, g with values other "
      "than 0/1. p, g: (data_ptr, word_size, zero_mask, one_bits, strides[5]).");

  m.def(
      "mask_border_cpu",
      [](py::tuple x, int64_t b, int64_t c, std::vector<int64_t> lo, std::vector<int64_t> hi, int nd, std::uintptr_t out,
         int threads) {
        const fastloss::MaskView v = mask_view(x);
        if (lo.size() != 3 || hi.size() != 3) throw std::invalid_argument("expected 3 box bounds per side");
        if (nd < 1 || nd > 3) throw std::invalid_argument("expected 1 to 3 real spatial axes");
        for (size_t a = 0; a < 3; ++a)
          if (lo[a] < 0 || hi[a] < lo[a]) throw std::invalid_argument("expected 0 <= lo <= hi");
        if (!out) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        return fastloss::mask_border_cpu(v, b, c, lo.data(), hi.data(), nd, reinterpret_cast<uint8_t*>(out), threads);
      },
      py::arg("x"), py::arg("b"), py::arg("c"), py::arg("lo"), py::arg("hi"), py::arg("nd"), py::arg("out_ptr"),
      py::arg("threads"), "Border voxels of volume (b, c) of x in the box [lo, hi) into a contiguous uint8 box; returns their count.");

  m.def(
      "skeletonize_cpu",
      [](std::uintptr_t mask, std::uintptr_t out, int64_t batch, std::vector<int64_t> shape, int threads) {
        if (!mask || !out) throw std::invalid_argument("null data pointer");
        if (mask == out) throw std::invalid_argument("the output must not alias the mask");
        py::gil_scoped_release release;
        fastloss::skeletonize_cpu(reinterpret_cast<const uint8_t*>(mask), reinterpret_cast<uint8_t*>(out), batch,
                                  shape, threads);
      },
      py::arg("mask_ptr"), py::arg("out_ptr"), py::arg("batch"), py::arg("shape"), py::arg("threads"),
      "Skeletons (scikit-image 0.26's: Zhang-Suen for 2 sizes, Lee 1994 for 3) of `batch` contiguous uint8 masks "
      "(non-zero = foreground) of `shape` into contiguous uint8 `out` (0/1).");

  m.def(
      "skeletonize_parallel_host",
      [](std::uintptr_t mask, std::uintptr_t out, int64_t batch, std::vector<int64_t> shape, int threads) {
        if (!mask || !out) throw std::invalid_argument("null data pointer");
        if (mask == out) throw std::invalid_argument("the output must not alias the mask");
        py::gil_scoped_release release;
        fastloss::skeletonize_parallel_host(reinterpret_cast<const uint8_t*>(mask), reinterpret_cast<uint8_t*>(out),
                                            batch, shape, threads);
      },
      py::arg("mask_ptr"), py::arg("out_ptr"), py::arg("batch"), py::arg("shape"), py::arg("threads"),
      "The parallel thinning (the GPU's passes: Zhang-Suen sub-passes for 2 sizes, Lee's test in parity subfields "
      "for 3) of `batch` contiguous uint8 masks of `shape` into contiguous uint8 `out` (0/1), on the CPU.");

  m.def(
      "has_cuda",
      []() {
#if defined(FASTLOSS_WITH_CUDA)
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled into this build.");


  m.def(
      "class_stats_cpu_forward",
      [](py::object x, py::object labels, py::object soft, py::object mask, py::object vmap, int64_t B, int64_t C,
         int64_t N, int activation, std::vector<int> cols, double gamma, py::object alpha, double ce_exponent,
         double log_eps, py::object ignore_index, std::uintptr_t out, int threads, std::uintptr_t voxel_ce,
         py::object regions, int64_t regions_len, py::object aux) {
        auto a = stats_args(x, labels, soft, mask, vmap, B, C, N, activation, cols, gamma, alpha, ce_exponent,
                            log_eps, ignore_index);
        set_regions(a, regions, regions_len);
        set_aux(a, aux);
        if (!out) throw std::invalid_argument("null data pointer");
        if (voxel_ce) {
          if (!fastloss::stats_fused_path(a))
            throw std::invalid_argument("a per-voxel CE output needs softmax, labels and the fused columns only");
          a.voxel_ce_out = reinterpret_cast<float*>(voxel_ce);
        }
        py::gil_scoped_release release;
        fastloss::class_stats_cpu_forward(a, reinterpret_cast<void*>(out), threads);
      },
      py::arg("x"), py::arg("labels"), py::arg("soft"), py::arg("mask"), py::arg("vmap"), py::arg("B"), py::arg("C"),
      py::arg("N"), py::arg("activation"), py::arg("cols"), py::arg("gamma"), py::arg("alpha"), py::arg("ce_exponent"),
      py::arg("log_eps"), py::arg("ignore_index"), py::arg("out_ptr"), py::arg("threads"), py::arg("voxel_ce_ptr") = 0,
      py::arg("regions") = py::none(), py::arg("regions_len") = 0, py::arg("aux") = py::none(),
      "Per-(b, c) sums of the statistics columns into a contiguous (B, C, K) float32 (float64 for float64 x) tensor; "
      "with voxel_ce_ptr, also -log p_y per voxel into a contiguous (B, N) float32 tensor (fused path only); with "
      "regions (a view of a contiguous int64 label-to-regions table of regions_len entries), region targets; with "
      "aux (a (B, N) view of integer labels), the aux_pg / aux_g columns over them.");

  m.def(
      "class_stats_cpu_backward",
      [](py::object x, py::object labels, py::object soft, py::object mask, py::object vmap, int64_t B, int64_t C,
         int64_t N, int activation, std::vector<int> cols, double gamma, py::object alpha, double ce_exponent,
         double log_eps, py::object ignore_index, std::uintptr_t grad, py::object dx, int threads,
         std::uintptr_t voxel_ce_grad, py::object regions, int64_t regions_len, py::object aux) {
        auto a = stats_args(x, labels, soft, mask, vmap, B, C, N, activation, cols, gamma, alpha, ce_exponent,
                            log_eps, ignore_index);
        set_regions(a, regions, regions_len);
        set_aux(a, aux);
        if (voxel_ce_grad) {
          if (!fastloss::stats_fused_path(a))
            throw std::invalid_argument("a per-voxel CE gradient needs softmax, labels and the fused columns only");
          a.voxel_ce_grad = reinterpret_cast<const float*>(voxel_ce_grad);
        }
        const fastloss::View d = tensor_view(dx);
        if (!grad || !d.data) throw std::invalid_argument("null data pointer");
        if (d.dtype != a.x.dtype) throw std::invalid_argument("dx must have the dtype of x");
        py::gil_scoped_release release;
        fastloss::class_stats_cpu_backward(a, reinterpret_cast<const void*>(grad), d, threads);
      },
      py::arg("x"), py::arg("labels"), py::arg("soft"), py::arg("mask"), py::arg("vmap"), py::arg("B"), py::arg("C"),
      py::arg("N"), py::arg("activation"), py::arg("cols"), py::arg("gamma"), py::arg("alpha"), py::arg("ce_exponent"),
      py::arg("log_eps"), py::arg("ignore_index"), py::arg("grad_ptr"), py::arg("dx"), py::arg("threads"),
      py::arg("voxel_ce_grad_ptr") = 0, py::arg("regions") = py::none(), py::arg("regions_len") = 0,
      py::arg("aux") = py::none(),
      "dL/dx from dL/d(stats) (contiguous (B, C, K) in the compute dtype), recomputing the activation; with "
      "voxel_ce_grad_ptr, plus the gradient of the per-voxel CE output (contiguous (B, N) float32).");

  m.def(
      "voxel_ce_cpu_forward",
      [](py::object x, py::object labels, int64_t B, int64_t C, int64_t N, py::object ignore_index, std::uintptr_t ce,
         int threads) {
        auto cols = all_columns_off();
        cols[fastloss::kCE] = 0;
        const auto a = stats_args(x, labels, py::none(), py::none(), py::none(), B, C, N, fastloss::kSoftmax, cols,
                                  2.0, py::none(), 1.0, 0.0, ignore_index);
        if (!a.labels.data || !ce) throw std::invalid_argument("labels and an output are required");
        py::gil_scoped_release release;
        fastloss::voxel_ce_cpu_forward(a, reinterpret_cast<void*>(ce), threads);
      },
      py::arg("x"), py::arg("labels"), py::arg("B"), py::arg("C"), py::arg("N"), py::arg("ignore_index"),
      py::arg("ce_ptr"), py::arg("threads"),
      "Per-voxel softmax CE -log p_y into a contiguous (B, N) tensor of the compute dtype; 0 at ignored voxels.");

  m.def(
      "voxel_ce_cpu_backward",
      [](py::object x, py::object labels, int64_t B, int64_t C, int64_t N, py::object ignore_index, std::uintptr_t gce,
         py::object dx, int threads) {
        auto cols = all_columns_off();
        cols[fastloss::kCE] = 0;
        const auto a = stats_args(x, labels, py::none(), py::none(), py::none(), B, C, N, fastloss::kSoftmax, cols,
                                  2.0, py::none(), 1.0, 0.0, ignore_index);
        const fastloss::View d = tensor_view(dx);
        if (!a.labels.data || !gce || !d.data) throw std::invalid_argument("null data pointer");
        if (d.dtype != a.x.dtype) throw std::invalid_argument("dx must have the dtype of x");
        py::gil_scoped_release release;
        fastloss::voxel_ce_cpu_backward(a, reinterpret_cast<const void*>(gce), d, threads);
      },
      py::arg("x"), py::arg("labels"), py::arg("B"), py::arg("C"), py::arg("N"), py::arg("ignore_index"),
      py::arg("gce_ptr"), py::arg("dx"), py::arg("threads"),
      "dx = dL/dce * (p - onehot(y)) at counted voxels, 0 elsewhere.");

  m.def(
      "topk_select_cpu",
      [](std::uintptr_t values, int64_t m, int64_t k, int threads) {
        if (!values) throw std::invalid_argument("null data pointer");
        fastloss::TopkResult r;
        {
          py::gil_scoped_release release;
          r = fastloss::topk_select_cpu(reinterpret_cast<const float*>(values), m, k, threads);
        }
        return py::make_tuple(r.sum, r.threshold, r.count_greater, r.count_equal);
      },
      py::arg("values_ptr"), py::arg("m"), py::arg("k"), py::arg("threads"),
      "(sum of the k largest, k-th largest, #greater, #equal) of m contiguous float32 values.");

  // NACL's neighbourhood penalty (csrc/nacl_cpu.h): per (b, c) plane sums, and the derivative when deriv_ptr != 0.
  m.def(
      "nacl_penalty_cpu",
      [](std::uintptr_t x, std::uintptr_t labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D, int nd,
         std::vector<float> weights, int64_t left, float scale, int distance, int elem, std::uintptr_t sums,
         std::uintptr_t deriv, int threads) {
        if (!x || !labels || !sums) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        fastloss::nacl_penalty_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(labels), B, C, H,
                                   W, D, nd, weights, left, scale, distance, elem, reinterpret_cast<double*>(sums),
                                   reinterpret_cast<void*>(deriv), threads);
      },
      py::arg("x_ptr"), py::arg("labels_ptr"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("D"),
      py::arg("nd"), py::arg("weights"), py::arg("left"), py::arg("scale"), py::arg("distance"), py::arg("elem"),
      py::arg("sums_ptr"), py::arg("deriv_ptr"), py::arg("threads"),
      "NACL's penalty of (B, C, H, W, D) logits (float32: elem 4, float64: elem 8) against the filtered indicators of "
      "int64 labels (B, H, W, D): B*C double sums, and sign/2x derivatives into deriv_ptr unless it is 0.");

  // The fused NACL loss (csrc/nacl_cpu.h): forward (pen: B*C doubles, ce: B doubles) and backward (dx of x's type).
  m.def(
      "nacl_loss_cpu",
      [](std::uintptr_t x, std::uintptr_t labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D, int nd,
         std::vector<float> weights, int64_t left, float scale, int distance, int elem, std::uintptr_t pen,
         std::uintptr_t ce, std::uintptr_t grad_pen, std::uintptr_t grad_ce, std::uintptr_t dx, int threads) {
        if (!x || !labels) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        if (dx && pen)
          fastloss::nacl_loss_cpu_forward_grad(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(labels),
                                               B, C, H, W, D, nd, weights, left, scale, distance, elem,
                                               reinterpret_cast<double*>(pen), reinterpret_cast<double*>(ce),
                                               reinterpret_cast<const double*>(grad_pen),
                                               reinterpret_cast<const double*>(grad_ce), reinterpret_cast<void*>(dx),
                                               threads);
        else if (dx)
          fastloss::nacl_loss_cpu_backward(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(labels), B,
                                           C, H, W, D, nd, weights, left, scale, distance, elem,
                                           reinterpret_cast<const double*>(grad_pen),
                                           reinterpret_cast<const double*>(grad_ce), reinterpret_cast<void*>(dx), threads);
        else
          fastloss::nacl_loss_cpu_forward(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(labels), B,
                                          C, H, W, D, nd, weights, left, scale, distance, elem,
                                          reinterpret_cast<double*>(pen), reinterpret_cast<double*>(ce), threads);
      },
      py::arg("x_ptr"), py::arg("labels_ptr"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("D"),
      py::arg("nd"), py::arg("weights"), py::arg("left"), py::arg("scale"), py::arg("distance"), py::arg("elem"),
      py::arg("pen_ptr"), py::arg("ce_ptr"), py::arg("grad_pen_ptr"), py::arg("grad_ce_ptr"), py::arg("dx_ptr"),
      py::arg("threads"),
      "NACL's CE and penalty of (B, C, H, W, D) logits and int64 labels (B, H, W, D): the forward (dx_ptr 0) writes "
      "B*C penalty sums and B CE sums (doubles); the backward writes dx from B*C and B double gradients; with both "
      "the sums' and dx's pointers the forward also writes dx for the given gradients.");

  // The soft confusion matrix (csrc/soft_confusion_cpu.h): forward when grad_ptr is 0 (out: B*C*C doubles),
  // otherwise the backward (grad: B*C*C doubles, out: dx of x's type).
  m.def(
      "soft_confusion_cpu",
      [](std::uintptr_t x, std::uintptr_t labels, std::uintptr_t grad, std::uintptr_t out, int64_t B, int64_t C,
         int64_t N, int elem, int threads) {
        if (!x || !labels || !out) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        if (grad)
          fastloss::soft_confusion_backward_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(labels),
                                                reinterpret_cast<const double*>(grad), B, C, N, elem,
                                                reinterpret_cast<void*>(out), threads);
        else
          fastloss::soft_confusion_forward_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(labels),
                                               B, C, N, elem, reinterpret_cast<double*>(out), threads);
      },
      py::arg("x_ptr"), py::arg("labels_ptr"), py::arg("grad_ptr"), py::arg("out_ptr"), py::arg("B"), py::arg("C"),
      py::arg("N"), py::arg("elem"), py::arg("threads"),
      "Soft confusion matrix S[b, l, c] = sum over the voxels of label l of softmax(x)_c, or its backward.");

  // The soft confusion rows contracted with M (csrc/soft_confusion_cpu.h): out: B*2C doubles (W, then the counts);
  // q_ptr 0 or the (B, C, N) derivative of x's type.
  m.def(
      "soft_confusion_rows_cpu",
      [](std::uintptr_t x, std::uintptr_t labels, std::uintptr_t M, std::uintptr_t out, std::uintptr_t q, int64_t B,
         int64_t C, int64_t N, int elem, int threads) {
        if (!x || !labels || !M || !out) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        fastloss::soft_confusion_rows_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<const int64_t*>(labels),
                                          reinterpret_cast<const double*>(M), B, C, N, elem,
                                          reinterpret_cast<double*>(out), reinterpret_cast<void*>(q), threads);
      },
      py::arg("x_ptr"), py::arg("labels_ptr"), py::arg("M_ptr"), py::arg("out_ptr"), py::arg("q_ptr"), py::arg("B"),
      py::arg("C"), py::arg("N"), py::arg("elem"), py::arg("threads"),
      "Wasserstein row sums W[b, l] = sum over the voxels of label l of sum_c M[l, c] softmax(x)_c and the label "
      "counts, and optionally the derivative q = p_c (M[y, c] - w).");

  m.def(
      "soft_confusion_rows_scale_cpu",
      [](std::uintptr_t labels, std::uintptr_t A, std::uintptr_t q, int64_t B, int64_t C, int64_t N, int elem,
         int threads) {
        if (!labels || !A || !q) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        fastloss::soft_confusion_rows_scale_cpu(reinterpret_cast<const int64_t*>(labels), reinterpret_cast<const double*>(A),
                                                B, C, N, elem, reinterpret_cast<void*>(q), threads);
      },
      py::arg("labels_ptr"), py::arg("A_ptr"), py::arg("q_ptr"), py::arg("B"), py::arg("C"), py::arg("N"), py::arg("elem"),
      py::arg("threads"), "The rows op's backward in place: q[b, c, v] *= A[b, labels[b, v]] (0 outside [0, C)).");

  // clDice's soft skeleton (csrc/soft_skeleton_cpu.h): R planes of H x W x D, forward and recomputing backward.
  m.def(
      "soft_skeleton_cpu",
      [](std::uintptr_t x, std::uintptr_t grad_out, std::uintptr_t out, int64_t R, int64_t H, int64_t W, int64_t D,
         int nd, int iters, int elem, int threads) {
        if (!x || !out) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        if (grad_out)
          fastloss::soft_skeleton_backward_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(grad_out),
                                               reinterpret_cast<void*>(out), R, H, W, D, nd, iters, elem, threads);
        else
          fastloss::soft_skeleton_forward_cpu(reinterpret_cast<const void*>(x), reinterpret_cast<void*>(out), R, H, W, D,
                                              nd, iters, elem, threads);
      },
      py::arg("x_ptr"), py::arg("grad_out_ptr"), py::arg("out_ptr"), py::arg("R"), py::arg("H"), py::arg("W"),
      py::arg("D"), py::arg("nd"), py::arg("iters"), py::arg("elem"), py::arg("threads"),
      "MONAI's soft_skel of R contiguous planes (float32: elem 4, float64: elem 8): grad_out_ptr 0 writes the "
      "skeleton to out, otherwise out = (d skel/dx)^T grad_out.");

  m.def(
      "lovasz_cpu",
      [](std::uintptr_t errors, std::uintptr_t fg, std::uintptr_t valid, int64_t R, int64_t P, int elem,
         std::uintptr_t loss, std::uintptr_t d, int threads) {
        if (!errors || !fg || !loss || (!d && R * P > 0)) throw std::invalid_argument("null data pointer");
        py::gil_scoped_release release;
        fastloss::lovasz_cpu(reinterpret_cast<const void*>(errors), reinterpret_cast<const void*>(fg),
                             reinterpret_cast<const uint8_t*>(valid), R, P, elem, reinterpret_cast<void*>(loss),
                             reinterpret_cast<void*>(d), threads);
      },
      py::arg("errors_ptr"), py::arg("fg_ptr"), py::arg("valid_ptr"), py::arg("R"), py::arg("P"), py::arg("elem"),
      py::arg("loss_ptr"), py::arg("d_ptr"), py::arg("threads"),
      "Lovász-Jaccard loss of R contiguous rows of P errors (float32: elem 4, float64: elem 8) and its "
      "subgradient d (R, P); valid: uint8 (R, P) or 0.");

  m.def(
      "topk_weights_cpu",
      [](std::uintptr_t values, int64_t m, float thr, float share, float grad, std::uintptr_t out, int threads) {
        if (!values || !out || m < 0) throw std::invalid_argument("bad arguments");
        py::gil_scoped_release release;
        fastloss::topk_weights_cpu(reinterpret_cast<const float*>(values), m, thr, share, grad,
                                   reinterpret_cast<float*>(out), threads);
      },
      py::arg("values_ptr"), py::arg("m"), py::arg("thr"), py::arg("share"), py::arg("grad"), py::arg("out_ptr"),
      py::arg("threads"), "grad * (1 if v > thr, share if v == thr, else 0) of m contiguous float32 values.");

  // A block of the output-buffer cache (csrc/buffer_pool.h) as a writable Python buffer: torch.frombuffer
  // views it and keeps this object alive as long as any tensor does; its destructor hands the block back.
  class PooledBuffer {
   public:
    explicit PooledBuffer(std::size_t bytes) : bytes_(bytes) {
      py::gil_scoped_release release;  // a fresh block is faulted in: milliseconds for ~100 MiB
      ptr_ = fastloss::buffer_pool_acquire(bytes, &capacity_);
    }
    ~PooledBuffer() { fastloss::buffer_pool_release(ptr_, capacity_); }
    PooledBuffer(const PooledBuffer&) = delete;
    PooledBuffer& operator=(const PooledBuffer&) = delete;
    void* ptr() const { return ptr_; }
    std::size_t bytes() const { return bytes_; }
    std::size_t capacity() const { return capacity_; }

   private:
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0, capacity_ = 0;
  };
  py::class_<PooledBuffer>(m, "PooledBuffer", py::buffer_protocol(),
                           "`bytes` bytes (> 0) of the CPU output-buffer cache, 2 MiB aligned, contents undefined.")
      .def(py::init([](int64_t bytes) {
             if (bytes <= 0) throw std::invalid_argument("expected bytes > 0, got " + std::to_string(bytes));
             return std::unique_ptr<PooledBuffer>(new PooledBuffer(static_cast<std::size_t>(bytes)));
           }),
           py::arg("bytes"))
      .def_buffer([](PooledBuffer& b) {
        return py::buffer_info(b.ptr(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.bytes())}, {static_cast<py::ssize_t>(1)}, false);
      })
      .def_property_readonly("ptr", [](const PooledBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.ptr()); })
      .def_property_readonly("capacity", &PooledBuffer::capacity);
  m.def("buffer_cache_empty", []() { fastloss::buffer_pool_empty(); },
        "Returns the cache's free blocks to the system.");
  m.def(
      "buffer_cache_set_limit",
      [](int64_t bytes) {
        if (bytes < 0) throw std::invalid_argument("expected a limit >= 0 bytes, got " + std::to_string(bytes));
        fastloss::buffer_pool_set_limit(static_cast<std::size_t>(bytes));
      },
      py::arg("bytes"), "Most bytes the cache keeps in free blocks (0: none); over it, the oldest are freed.");
  m.def("buffer_cache_info", []() {
    const fastloss::BufferPoolInfo i = fastloss::buffer_pool_info();
    py::dict d;
    d["cached_bytes"] = i.cached_bytes;
    d["cached_blocks"] = i.cached_blocks;
    d["limit_bytes"] = i.limit_bytes;
    d["hits"] = i.hits;
    d["misses"] = i.misses;
    return d;
  });

  m.def(
      "loss_formula_cpu",
      [](std::uintptr_t stats, int64_t B, int64_t C, int64_t K, std::uintptr_t rw, int64_t rw_stride,
         std::uintptr_t dw, int64_t dw_stride, std::vector<int64_t> ints, std::vector<double> floats,
         std::uintptr_t loss, std::uintptr_t dstats) {
        if (!stats || !loss || !dstats) throw std::invalid_argument("null data pointer");
        *reinterpret_cast<float*>(loss) = fastloss::loss_formula_cpu(
            reinterpret_cast<const float*>(stats), B, C, K, reinterpret_cast<const float*>(rw), rw_stride,
            reinterpret_cast<const float*>(dw), dw_stride, ints, floats, reinterpret_cast<float*>(dstats));
      },
      py::arg("stats_ptr"), py::arg("B"), py::arg("C"), py::arg("K"), py::arg("region_weight_ptr"),
      py::arg("rw_stride"), py::arg("dist_weight_ptr"), py::arg("dw_stride"), py::arg("ints"), py::arg("floats"),
      py::arg("loss_ptr"), py::arg("dstats_ptr"),
      "The fused loss formula (ops/triton_formula.make_config's ints and floats) on (B, C, K) float32 "
      "statistics: the loss into loss_ptr (one float32), dL/dstats into dstats_ptr (B, C, K).");

  m.def("cpu_isa", []() { return std::string(fastloss::stats_cpu_isa()); },
        "The instruction set the CPU loss kernels use (FASTLOSS_CPU_ISA lowers it).");

  m.def(
      "half_roundtrip_cpu",
      [](std::uintptr_t src, std::uintptr_t dst, int64_t n, int kind) {
        // test hook for the conversions the kernels use: kind 0 half->float, 1 float->half,
        // 2 bfloat16->float, 3 float->bfloat16
        if (!src || !dst || n < 0 || kind < 0 || kind > 3) throw std::invalid_argument("bad arguments");
        fastloss::convert_halves_cpu(reinterpret_cast<const void*>(src), reinterpret_cast<void*>(dst), n, kind);
      },
      py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("n"), py::arg("kind"));

  m.def("hardware_concurrency", []() { return static_cast<int>(std::thread::hardware_concurrency()); });

#if defined(FASTLOSS_WITH_CUDA)
  m.def(
      "edt_cuda",
      [](std::uintptr_t mask, std::uintptr_t out, std::uintptr_t scratch, int64_t batch, std::vector<int64_t> shape,
         std::vector<double> spacing, bool squared, std::uintptr_t stream) {
        check_geometry(batch, shape, spacing);
        if (!mask || !out || !scratch) throw std::invalid_argument("null device pointer");
        int err = fastloss::edt_cuda(reinterpret_cast<const uint8_t*>(mask), reinterpret_cast<float*>(out),
                                     reinterpret_cast<void*>(scratch), batch, shape, spacing, squared,
                                     reinterpret_cast<void*>(stream));
        if (err != 0) throw std::runtime_error("fastloss edt_cuda: CUDA error " + std::to_string(err));
      },
      py::arg("mask_ptr"), py::arg("out_ptr"), py::arg("scratch_ptr"), py::arg("batch"), py::arg("shape"),
      py::arg("spacing"), py::arg("squared"), py::arg("stream"),
      "EDT on the GPU, enqueued on `stream`; scratch holds 2 * batch * prod(shape) 32-bit words.");

  m.def(
      "skeletonize_cuda",
      [](std::uintptr_t mask, std::uintptr_t out, std::uintptr_t scratch, std::uintptr_t flag, int64_t batch,
         std::vector<int64_t> shape, std::uintptr_t stream) {
        if (shape.size() != 2 && shape.size() != 3)
          throw std::invalid_argument("skeletonize expects 2 or 3 spatial dims, got " + std::to_string(shape.size()));
        if (batch < 1) throw std::invalid_argument("expected batch >= 1, got " + std::to_string(batch));
        for (int64_t s : shape)
          if (s < 1) throw std::invalid_argument("expected positive sizes, got " + std::to_string(s));
        if (!mask || !out || !flag || !scratch) throw std::invalid_argument("null device pointer");
        if (mask == out || scratch == out || scratch == mask)
          throw std::invalid_argument("mask, out and scratch must not alias");
        int err = 0;
        {
          py::gil_scoped_release release;  // one host sync per sweep
          err = fastloss::skeletonize_cuda(reinterpret_cast<const uint8_t*>(mask), reinterpret_cast<uint8_t*>(out),
                                           reinterpret_cast<uint8_t*>(scratch), reinterpret_cast<int32_t*>(flag), batch,
                                           shape, reinterpret_cast<void*>(stream));
        }
        if (err != 0) throw std::runtime_error("fastloss skeletonize_cuda: CUDA error " + std::to_string(err));
      },
      py::arg("mask_ptr"), py::arg("out_ptr"), py::arg("scratch_ptr"), py::arg("flag_ptr"), py::arg("batch"),
      py::arg("shape"), py::arg("stream"),
      "The parallel thinning on the GPU (the passes of skeletonize_parallel_host), on `stream`: uint8 masks into "
      "uint8 out (0/1); scratch: batch * prod(shape) bytes; flag: one int32; one host sync per sweep.");
#endif
}
