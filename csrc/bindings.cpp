// pybind11 module fastloss._C. It links neither libtorch nor numpy: the Python layer (fastloss/edt.py)
// validates inputs and passes raw data pointers (integers), sizes, spacing and a CUDA stream handle.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "edt.h"

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
      "has_cuda",
      []() {
#if defined(FASTLOSS_WITH_CUDA)
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled into this build.");

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
#endif
}
