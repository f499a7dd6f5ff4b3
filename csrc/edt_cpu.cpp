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
#include <string>
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
      // the last pass of a plain transform takes the square root in double, before the float32 store (as
      // the CUDA kernels do): a square below float32's range (spacing 1e-25 along the first axis) must not
      // be stored as 0 first
      for (int64_t c = 0; c < w; ++c) {
        double* line = buf.data() + c * n;
        edt1d::parabola_line(
            n, s, take_sqrt, [line](int64_t q) { return line[q]; }, [line](int64_t q, float v) { line[q] = v; }, env);
      }
      for (int64_t j = 0; j < n; ++j) {
        float* row = base + j * inner;
        for (int64_t c = 0; c < w; ++c) row[c] = static_cast<float>(buf[static_cast<size_t>(c * n + j)]);
      }
    }
  });
}

// The transform for spacings within the safe range (see normalise_spacing).
void edt_cpu_normalised(const uint8_t* mask, float* out, int64_t batch, const std::vector<int64_t>& shape,
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

}  // namespace

namespace {

// floor(log2 x) and ceil(log2 x) of a positive finite double, exactly
int floor_log2(double x) {
  int e = 0;
  std::frexp(x, &e);  // x = f * 2^e, f in [0.5, 1)
  return e - 1;
}
int ceil_log2(double x) {
  int e = 0;
  const double f = std::frexp(x, &e);
  return f == 0.5 ? e - 1 : e;
}

}  // namespace

SpacingScale normalise_spacing(const std::vector<double>& spacing, const std::vector<int64_t>& shape) {
  SpacingScale r{spacing, 1.0};
  const size_t nd = spacing.size();
  if (nd == 0 || shape.size() != nd) return r;
  for (double s : spacing)
    if (!(s > 0.0) || !std::isfinite(s)) throw std::invalid_argument("expected positive finite spacing");
  // the axes whose squares are stored between passes: all but the first (whose pass is the last), and in
  // 1D the one axis (edt_query_cpu keeps its pass-1 squares in float32 too)
  const size_t inner0 = nd == 1 ? 0 : 1;
  double big_inner = 0.0, small_inner = std::numeric_limits<double>::infinity();
  double big = 0.0, small = std::numeric_limits<double>::infinity();
  for (size_t a = 0; a < nd; ++a) {
    const double extent = spacing[a] * static_cast<double>(std::max<int64_t>(shape[a], 1));
    big = std::max(big, extent);
    small = std::min(small, spacing[a]);
    if (a >= inner0) {
      big_inner = std::max(big_inner, extent);
      small_inner = std::min(small_inner, spacing[a]);
    }
  }
  if (big_inner <= kSpacingExtentHi && small_inner >= kSpacingStepLo) return r;  // the common case: as given
  // 2^e with every extent / 2^e <= 2^62 and every spacing / 2^e >= 2^-60: then no stored square
  // overflows or leaves float32's normal range, whichever pass stores it
  const int lo_e = ceil_log2(big) - 62, hi_e = floor_log2(small) + 60;
  if (lo_e > hi_e)
    throw std::invalid_argument(
        "spacing too far apart for the transform's float32 squared distances: the largest spacing times its axis "
        "length (" + std::to_string(big) + ") may exceed the smallest spacing (" + std::to_string(small) +
        ") at most 2^122 (~5e36) times");
  const int e = lo_e + (hi_e - lo_e) / 2;
  r.scale = std::ldexp(1.0, e);
  for (double& s : r.spacing) s = std::ldexp(s, -e);  // exact: a power of two
  return r;
}

void scale_distances(float* out, int64_t n, double scale, bool squared, int threads) {
  if (scale == 1.0 || n <= 0) return;
  const int64_t chunk = int64_t(1) << 16;
  parallel_for((n + chunk - 1) / chunk, resolve_threads(threads), [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * chunk, hi = std::min(n, end * chunk);
    for (int64_t i = lo; i < hi; ++i) {
      const double v = static_cast<double>(out[i]);
      // one rounding from the exact product (0 stays 0, inf stays inf: never 0 * inf)
      const double w = v == 0.0 ? 0.0 : (squared ? v * scale * scale : v * scale);
      out[i] = static_cast<float>(w);
    }
  });
}

void edt_cpu(const uint8_t* mask, float* out, int64_t batch, const std::vector<int64_t>& shape,
             const std::vector<double>& spacing, bool squared, int threads) {
  const SpacingScale norm = normalise_spacing(spacing, shape);
  edt_cpu_normalised(mask, out, batch, shape, norm.spacing, squared, threads);
  if (norm.scale != 1.0) {
    int64_t total = batch;
    for (int64_t d : shape) total *= d;
    scale_distances(out, total, norm.scale, squared, threads);
  }
}

}  // namespace fastloss
