// Exact Euclidean distance transform on the CPU: separable passes of edt_1d.h, threaded over lines.
//
// Layout: `batch` volumes of shape (n0[, n1[, n2]]), C order. Pass 1 runs the binary two-scan along the
// last (contiguous) axis straight from the uint8 mask. The parabola passes then run along the other axes,
// last to first. Their lines are strided, so a pass works on tiles of kTile neighbouring lines (kTile
// consecutive floats of every row, a cache line): it gathers a tile into a float64 buffer, runs the 1D
// envelope on each line in place, and scatters the tile back. Tiles that hold only zeros are skipped.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

#include "edt.h"
#include "edt_1d.h"
#include "parallel.h"

namespace fastloss {
namespace {

constexpr int64_t kTile = 16;  // lines per tile: 16 floats = one 64-byte cache line per row

// Envelope storage for one line (root, value, left breakpoint), sized for the longest segment.
struct HostEnv {
  std::vector<int64_t> vs;
  std::vector<double> fs, zs;
  explicit HostEnv(int64_t n) : vs(static_cast<size_t>(n)), fs(static_cast<size_t>(n)), zs(static_cast<size_t>(n)) {}
  void reserve(int64_t n) {
    if (vs.size() < static_cast<size_t>(n)) {
      vs.resize(static_cast<size_t>(n));
      fs.resize(static_cast<size_t>(n));
      zs.resize(static_cast<size_t>(n));
    }
  }
  void set(int64_t k, int64_t v, double f, double z) {
    vs[k] = v;
    fs[k] = f;
    zs[k] = z;
  }
  int64_t v(int64_t k) const { return vs[k]; }
  double f(int64_t k) const { return fs[k]; }
  double z(int64_t k) const { return zs[k]; }
};

// Pass 1: binary two-scan along the contiguous last axis (length n) of `lines` lines.
void binary_pass(const uint8_t* mask, float* out, int64_t lines, int64_t n, double s, bool take_sqrt, int threads) {
  parallel_for(lines, threads, [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      const uint8_t* m = mask + line * n;
      float* o = out + line * n;
      edt1d::binary_line(
          n, s, take_sqrt, [m](int64_t i) { return m[i] == 0; }, [o](int64_t i) { return o[i]; },
          [o](int64_t i, float v) { o[i] = v; });
    }
  });
}

// A parabola pass along an axis of length n: lines (o, i) start at o*n*inner + i with stride `inner`.
void parabola_pass(float* out, int64_t outer, int64_t n, int64_t inner, double s, bool take_sqrt, int threads) {
  const int64_t tiles_per_outer = (inner + kTile - 1) / kTile;
  const int64_t tiles = outer * tiles_per_outer;
  parallel_for(tiles, threads, [&](int64_t begin, int64_t end) {
    // per-thread scratch, reused across the chunks a thread takes
    thread_local std::vector<double> buf;
    thread_local HostEnv env(0);
    if (buf.size() < static_cast<size_t>(kTile * n)) buf.resize(static_cast<size_t>(kTile * n));
    env.reserve(n);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t o = t / tiles_per_outer;
      const int64_t i0 = (t % tiles_per_outer) * kTile;
      const int64_t w = std::min<int64_t>(kTile, inner - i0);
      float* base = out + o * n * inner + i0;
      // Gather rows (w consecutive floats each) into w line buffers; note whether anything is non-zero.
      bool any_nonzero = false;
      for (int64_t j = 0; j < n; ++j) {
        const float* row = base + j * inner;
        for (int64_t c = 0; c < w; ++c) {
          const float v = row[c];
          any_nonzero |= (v != 0.0f);
          buf[static_cast<size_t>(c * n + j)] = v;
        }
      }
      if (!any_nonzero) continue;  // all zero: the pass changes nothing (and sqrt(0) = 0)
      for (int64_t c = 0; c < w; ++c) {
        double* line = buf.data() + c * n;
        edt1d::parabola_line(
            n, s, false, [line](int64_t q) { return line[q]; }, [line](int64_t q, float v) { line[q] = v; }, env);
      }
      if (take_sqrt) {
        for (int64_t j = 0; j < n; ++j) {
          float* row = base + j * inner;
          for (int64_t c = 0; c < w; ++c) row[c] = static_cast<float>(std::sqrt(buf[static_cast<size_t>(c * n + j)]));
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          float* row = base + j * inner;
          for (int64_t c = 0; c < w; ++c) row[c] = static_cast<float>(buf[static_cast<size_t>(c * n + j)]);
        }
      }
    }
  });
}

}  // namespace

void edt_cpu(const uint8_t* mask, float* out, int64_t batch, const std::vector<int64_t>& shape,
             const std::vector<double>& spacing, bool squared, int threads) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (nd < 1 || nd > 3) throw std::invalid_argument("edt_cpu: 1 to 3 spatial dims expected");
  if (static_cast<int64_t>(spacing.size()) != nd) throw std::invalid_argument("edt_cpu: one spacing per spatial dim");
  if (batch < 0) throw std::invalid_argument("edt_cpu: negative batch");
  int64_t total = batch;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("edt_cpu: negative size");
    total *= d;
  }
  if (total == 0) return;
  threads = resolve_threads(threads);
  // Small inputs: thread start-up (~20 us) would cost more than the work.
  if (total < (int64_t(1) << 15)) threads = 1;

  const int64_t last = shape[nd - 1];
  binary_pass(mask, out, total / last, last, spacing[nd - 1], !squared && nd == 1, threads);
  int64_t inner = last;
  for (int64_t a = nd - 2; a >= 0; --a) {
    const int64_t n = shape[a];
    const int64_t outer = total / (n * inner);
    parabola_pass(out, outer, n, inner, spacing[a], !squared && a == 0, threads);
    inner *= n;
  }
}

}  // namespace fastloss
