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
