// Exact 1D passes of the separable Euclidean distance transform, shared by the CPU (edt_cpu.cpp)
// and CUDA (edt_cuda.cu) code.
//
// Squared EDT of a D-dimensional mask = D one-dimensional passes (Saito-Toriwaki / Felzenszwalb-
// Huttenlocher): the first pass gives, along one axis, the squared distance to the nearest zero of the
// mask (two linear scans); every later pass computes, along its axis,
//     d(q) = min_p  f(p) + s^2 (q - p)^2,
// the lower envelope of the parabolas rooted at (p, f(p)), in O(n) per line. f = +inf marks a point with
// no background on its earlier axes (it roots no parabola); a line of +inf stays +inf, which is how a
// volume with no background ends as +inf everywhere.
//
// Envelope maths runs in float64 (the breakpoints are rationals of the float32 inputs; float32 breakpoints
// misorder near-ties on long lines), results are stored as float32. Never compile with -ffast-math: the
// code compares against and propagates infinities.
//
// The functions take accessors (load/store/envelope storage) as template parameters so that the CPU
// reads from a gathered double tile and the GPU reads strided global memory, with the same arithmetic.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FL_HD __host__ __device__ __forceinline__
#else
#define FL_HD inline
#endif

namespace fastloss {
namespace edt1d {

// +inf as a double on host and device (INFINITY is a float constant, exactly convertible).
#define FL_INF_D (static_cast<double>(INFINITY))

// Abscissa (in index units) where the parabola rooted at (q, fq) starts to lie below the one rooted at
// (p, fp), p < q:  fp + s^2 (x-p)^2 = fq + s^2 (x-q)^2
//   <=>  x = ((fq - fp) / s^2 + q^2 - p^2) / (2 (q - p)).
FL_HD double intersect(int64_t p, double fp, int64_t q, double fq, double inv_s2) {
  const double dp = static_cast<double>(p), dq = static_cast<double>(q);
  return ((fq - fp) * inv_s2 + (dq * dq - dp * dp)) / (2.0 * (dq - dp));
}

// First pass, one line of a binary mask: squared distance (scaled by s^2) to the nearest zero of the line,
// +inf when the line has no zero. `is_bg(i)` tells whether element i is background (a zero of the mask);
// `store(i, value)` writes the result. If `take_sqrt`, writes the distance instead (for 1D transforms).
// Two linear scans: forward distance to the last zero, then backward distance to the next one.
template <class IsBg, class Load, class Store>
FL_HD void binary_line(int64_t n, double s, bool take_sqrt, IsBg is_bg, Load load, Store store) {
  // Forward: distance (in voxels) to the previous zero, or +inf. Stored as float (exact up to 2^24).
  double run = FL_INF_D;
  for (int64_t i = 0; i < n; ++i) {
    if (is_bg(i)) {
      run = 0.0;
    } else {
      run += 1.0;  // inf + 1 == inf
    }
    store(i, static_cast<float>(run));
  }
  // Backward: min with the distance to the next zero; then scale and square.
  run = FL_INF_D;
  for (int64_t i = n - 1; i >= 0; --i) {
    const double fwd = static_cast<double>(load(i));
    if (fwd == 0.0) {
      run = 0.0;
    } else {
      run += 1.0;
    }
    const double d = (fwd < run ? fwd : run) * s;
    store(i, static_cast<float>(take_sqrt ? d : d * d));
  }
}

// Parabola envelope of the segment [lo, hi] of a line, evaluated and stored on [l, r] (lo <= l <= r <= hi).
// `load(i)` returns f(i) as double (+inf allowed); `env` keeps the envelope: env.set(k, v, fv, z) stores
// the k-th parabola (root v, value fv, left breakpoint z), env.v(k), env.f(k), env.z(k) read it back
// (an implementation may recompute z from its neighbours instead of storing it). The envelope's own
// f values are kept in env, so `store` may overwrite the line in place on [l, r].
// If `take_sqrt`, stores sqrt(d) (for the last pass of a non-squared transform).
template <class Load, class Store, class Env>
FL_HD void envelope_segment(int64_t lo, int64_t hi, int64_t l, int64_t r, double s2, double inv_s2, bool take_sqrt,
                            Load load, Store store, Env& env) {
  int64_t K = 0;  // number of parabolas in the envelope
  for (int64_t q = lo; q <= hi; ++q) {
    const double fq = load(q);
    if (fq == FL_INF_D) continue;  // roots no parabola
    if (K == 0) {
      env.set(0, q, fq, -FL_INF_D);
      K = 1;
      continue;
    }
    double x = intersect(env.v(K - 1), env.f(K - 1), q, fq, inv_s2);
    // Pop parabolas hidden by the new one: the new one already wins left of where the top one started.
    while (K > 1 && x <= env.z(K - 1)) {
      --K;
      x = intersect(env.v(K - 1), env.f(K - 1), q, fq, inv_s2);
    }
    env.set(K, q, fq, x);
    ++K;
  }
  if (K == 0) {  // no finite value anywhere in the segment
    for (int64_t q = l; q <= r; ++q) store(q, static_cast<float>(FL_INF_D));
    return;
  }
  int64_t k = 0;
  for (int64_t q = l; q <= r; ++q) {
    const double dq = static_cast<double>(q);
    while (k + 1 < K && env.z(k + 1) < dq) ++k;
    const double t = dq - static_cast<double>(env.v(k));
    const double d = env.f(k) + s2 * t * t;
    store(q, static_cast<float>(take_sqrt ? sqrt(d) : d));
  }
}

// One line of a later pass. Zeros split the line: for q between a zero at z and a root p beyond z,
// f(p) + s^2 (q-p)^2 >= s^2 (q-p)^2 > s^2 (q-z)^2, so each run of non-zero values [l, r] only needs the
// parabolas of [l-1, r+1] (its bounding zeros included), and zeros stay zero. Runs of zeros cost a
// compare per element; in-place stores are safe because a run is stored only after its envelope is built
// and the next run reads from its own bounding zero onwards.
template <class Load, class Store, class Env>
FL_HD void parabola_line(int64_t n, double s, bool take_sqrt, Load load, Store store, Env& env) {
  const double s2 = s * s, inv_s2 = 1.0 / (s * s);
  int64_t i = 0;
  while (i < n) {
    if (load(i) == 0.0) {
      ++i;
      continue;
    }
    const int64_t l = i;
    while (i < n && load(i) != 0.0) ++i;
    const int64_t r = i - 1;
    envelope_segment(l > 0 ? l - 1 : l, r + 1 < n ? r + 1 : r, l, r, s2, inv_s2, take_sqrt, load, store, env);
  }
}

}  // namespace edt1d
}  // namespace fastloss
