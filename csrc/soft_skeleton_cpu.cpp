// The soft skeleton of clDice on the CPU: MONAI's soft_skel, forward and a recomputing backward.
// Semantics and the derivation of every gradient line: fastloss/ops/soft_skeleton.py's module docstring.
//
// One plane (a (b, c) image of H x W x D values, D = 1 in 2D) is processed by one thread, start to end, in a
// fixed order: results do not depend on the thread count, and the backward's scatters (each value's gradient
// to its window's argmin/argmax) need no atomics. Tie rules are PyTorch's, so gradients match autograd through
// MONAI's ops: max_pool takes the first maximum of its window in scan order (h, then w, then d), and
// torch.minimum halves the gradient between equal operands.
//
// Products and differences are separate statements and the file is built without FP contraction, so every
// value is rounded as torch rounds its separate ops (the forward gives MONAI's bits).
#if defined(__GNUC__) && !defined(__clang__)
// no contraction (torch rounds products and sums separately); no trapping math, so that the row loops'
// compare-selects vectorise (infinities and NaNs still behave as IEEE says; never -ffast-math)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

#include "soft_skeleton_cpu.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"

namespace fastloss {
namespace {

struct Geom {
  int64_t H, W, D, N;  // N = H·W·D
  int64_t sH, sW;      // strides of h and w (d has stride 1)
  bool three_d;        // MONAI's 3D erosion (three directional pools) or its 2D one (two)
};

template <typename T>
inline T nan_min(T a, T b) {  // torch.minimum's value: NaN propagates, ties give either (equal) value
  if (std::isnan(a)) return a;
  if (std::isnan(b)) return b;
  return b < a ? b : a;
}

// Index and value of the minimum of x over the 3-window along one axis (stride st) at i, first in scan order:
// max_pool of −x keeps the first element whose −x is greater than the best so far (or NaN).
template <typename T>
inline void window_min(const T* x, int64_t i, int64_t st, bool lo, bool hi, T& val, int64_t& idx) {
  int64_t c[3];
  int n = 0;
  if (lo) c[n++] = i - st;
  c[n++] = i;
  if (hi) c[n++] = i + st;
  T best = -std::numeric_limits<T>::infinity();
  idx = c[0];
  for (int t = 0; t < n; ++t) {
    const T v = -x[c[t]];
    if (v > best || std::isnan(v)) {
      best = v;
      idx = c[t];
    }
  }
  val = -best;
}

// Row helpers: plain compare-selects on contiguous rows, which vectorise (no trapping math; inputs are
// finite, see soft_skeleton_cpu.h). Equal values give either operand: the same value.
template <typename T>
inline T vmin(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T vmax(T a, T b) {
  return b > a ? b : a;
}

// e = MONAI's erosion: min of x over the 3-windows along h, w (and d in 3D), the window clipped at the edges.
template <typename T>
void erode(const T* x, T* e, const Geom& g) {
  const int64_t D = g.D;
  for (int64_t h = 0; h < g.H; ++h)
    for (int64_t w = 0; w < g.W; ++w) {
      const int64_t base = h * g.sH + w * g.sW;
      const T* xr = x + base;
      T* er = e + base;
      if (g.three_d && D > 1) {
        er[0] = vmin(xr[0], xr[1]);
        for (int64_t d = 1; d + 1 < D; ++d) er[d] = vmin(vmin(xr[d - 1], xr[d]), xr[d + 1]);
        er[D - 1] = vmin(xr[D - 2], xr[D - 1]);
      } else {
        for (int64_t d = 0; d < D; ++d) er[d] = xr[d];
      }
      if (w > 0) {
        const T* n = xr - g.sW;
        for (int64_t d = 0; d < D; ++d) er[d] = vmin(er[d], n[d]);
      }
      if (w + 1 < g.W) {
        const T* n = xr + g.sW;
        for (int64_t d = 0; d < D; ++d) er[d] = vmin(er[d], n[d]);
      }
      if (h > 0) {
        const T* n = xr - g.sH;
        for (int64_t d = 0; d < D; ++d) er[d] = vmin(er[d], n[d]);
      }
      if (h + 1 < g.H) {
        const T* n = xr + g.sH;
        for (int64_t d = 0; d < D; ++d) er[d] = vmin(er[d], n[d]);
      }
    }
}

// o = the 3x3x3 max of x (the window clipped at the edges), separable: along d, then w, then h (a max is exact
// whatever the order).
template <typename T>
void dilate(const T* x, T* o, T* tmp, const Geom& g) {
  const int64_t D = g.D;
  for (int64_t hw = 0; hw < g.H * g.W; ++hw) {
    const T* r = x + hw * D;
    T* t = tmp + hw * D;
    if (D > 1) {
      t[0] = vmax(r[0], r[1]);
      for (int64_t d = 1; d + 1 < D; ++d) t[d] = vmax(vmax(r[d - 1], r[d]), r[d + 1]);
      t[D - 1] = vmax(r[D - 2], r[D - 1]);
    } else {
      t[0] = r[0];
    }
  }
  for (int64_t h = 0; h < g.H; ++h)
    for (int64_t w = 0; w < g.W; ++w) {
      const T* c = tmp + h * g.sH + w * g.sW;
      T* out = o + h * g.sH + w * g.sW;
      for (int64_t d = 0; d < D; ++d) out[d] = c[d];
      if (w > 0)
        for (int64_t d = 0; d < D; ++d) out[d] = vmax(out[d], c[d - g.sW]);
      if (w + 1 < g.W)
        for (int64_t d = 0; d < D; ++d) out[d] = vmax(out[d], c[d + g.sW]);
    }
  std::memcpy(tmp, o, sizeof(T) * static_cast<size_t>(g.N));
  for (int64_t h = 0; h < g.H; ++h) {
    const T* c = tmp + h * g.sH;
    T* out = o + h * g.sH;
    if (h > 0)
      for (int64_t j = 0; j < g.sH; ++j) out[j] = vmax(out[j], c[j - g.sH]);
    if (h + 1 < g.H)
      for (int64_t j = 0; j < g.sH; ++j) out[j] = vmax(out[j], c[j + g.sH]);
  }
}

template <typename T>
inline T relu(T v) {
  return v > T(0) ? v : T(0);
}

// Per-thread buffers for one plane.
template <typename T>
struct Work {
  explicit Work(int64_t n) : cur(n), s(n), e(n), o(n), tmp(n) {}
  std::vector<T> cur, s, e, o, tmp;
};

// One step: (x_k, s_{k-1}) in (cur, s) -> (x_{k+1}, s_k).
template <typename T>
void step(Work<T>& wk, const Geom& g) {
  erode(wk.cur.data(), wk.e.data(), g);
  dilate(wk.e.data(), wk.o.data(), wk.tmp.data(), g);
  T* s = wk.s.data();
  const T* x = wk.cur.data();
  const T* o = wk.o.data();
  for (int64_t i = 0; i < g.N; ++i) {
    const T delta = relu(x[i] - o[i]);
    const T sd = s[i] * delta;
    const T z = delta - sd;
    s[i] = s[i] + relu(z);
  }
  wk.cur.swap(wk.e);  // x_{k+1} = e_k
}

template <typename T>
void forward_plane(const T* x, T* out, const Geom& g, int iters, Work<T>& wk) {
  std::memcpy(wk.cur.data(), x, sizeof(T) * static_cast<size_t>(g.N));
  std::fill(wk.s.begin(), wk.s.end(), T(0));
  for (int k = 0; k <= iters; ++k) step(wk, g);
  std::memcpy(out, wk.s.data(), sizeof(T) * static_cast<size_t>(g.N));
}

// torch.minimum's backward for operands a, b: each gets g, halved on a tie, nothing where it is the larger.
template <typename T>
inline void min_split(T gr, T a, T b, T& ga, T& gb) {
  if (a == b) {
    ga = gr / T(2);
    gb = gr / T(2);
    return;
  }
  ga = (a > b) ? T(0) : gr;
  gb = (a < b) ? T(0) : gr;
}

// erode^T: out[src] += g[i] for the argmin routing of MONAI's erosion at every i (out is not cleared).
template <typename T>
void erode_backward(const T* x, const T* gin, T* out, const Geom& g) {
  for (int64_t h = 0; h < g.H; ++h)
    for (int64_t w = 0; w < g.W; ++w)
      for (int64_t d = 0; d < g.D; ++d) {
        const int64_t i = h * g.sH + w * g.sW + d;
        const T gr = gin[i];
        if (gr == T(0)) continue;
        T v1, v2;
        int64_t i1, i2;
        window_min(x, i, g.sH, h > 0, h + 1 < g.H, v1, i1);
        window_min(x, i, g.sW, w > 0, w + 1 < g.W, v2, i2);
        T g12 = gr;
        if (g.three_d) {
          T v3;
          int64_t i3;
          window_min(x, i, int64_t(1), d > 0, d + 1 < g.D, v3, i3);
          const T m12 = nan_min(v1, v2);
          T g3;
          min_split(gr, m12, v3, g12, g3);
          out[i3] += g3;
        }
        T g1, g2;
        min_split(g12, v1, v2, g1, g2);
        out[i1] += g1;
        out[i2] += g2;
      }
}

// dilate^T: out[argmax of the window at i] += g[i]: max_pool's first maximum in (h, w, d) scan order, i.e. the
// first element equal to the window's max o[i] (for finite values; a window without one, possible only with
// NaNs, routes to its first element: never outside the plane).
template <typename T>
void dilate_backward(const T* x, const T* o, const T* gin, T* out, const Geom& g) {
  for (int64_t h = 0; h < g.H; ++h) {
    const int64_t h0 = h > 0 ? h - 1 : 0, h1 = h + 1 < g.H ? h + 1 : h;
    for (int64_t w = 0; w < g.W; ++w) {
      const int64_t w0 = w > 0 ? w - 1 : 0, w1 = w + 1 < g.W ? w + 1 : w;
      for (int64_t d = 0; d < g.D; ++d) {
        const int64_t i = h * g.sH + w * g.sW + d;
        const T gr = gin[i];
        if (gr == T(0)) continue;
        const int64_t d0 = d > 0 ? d - 1 : 0, d1 = d + 1 < g.D ? d + 1 : d;
        const T m = o[i];
        int64_t arg = h0 * g.sH + w0 * g.sW + d0;
        bool found = false;
        for (int64_t a = h0; a <= h1 && !found; ++a)
          for (int64_t b = w0; b <= w1 && !found; ++b)
            for (int64_t c = d0; c <= d1; ++c) {
              const int64_t j = a * g.sH + b * g.sW + c;
              if (x[j] == m) {
                arg = j;
                found = true;
                break;
              }
            }
        out[arg] += gr;
      }
    }
  }
}

template <typename T>
void backward_plane(const T* x, const T* gout, T* gin, const Geom& g, int iters, Work<T>& wk) {
  const int64_t N = g.N;
  const size_t bytes = sizeof(T) * static_cast<size_t>(N);
  const int steps = iters + 1;
  int c = 1;
  while (c * c < steps) ++c;  // checkpoint stride ceil(sqrt(steps))
  const int nck = (steps - 1) / c + 1;
  std::vector<T> ck(static_cast<size_t>(2 * nck) * static_cast<size_t>(N));
  // forward sweep, keeping (x_k, s_{k-1}) at k = 0, c, 2c, ...
  std::memcpy(wk.cur.data(), x, bytes);
  std::fill(wk.s.begin(), wk.s.end(), T(0));
  const int last = (nck - 1) * c;  // the last checkpoint (<= steps - 1)
  for (int k = 0; k <= last; ++k) {
    if (k % c == 0) {
      const size_t j = static_cast<size_t>(k / c);
      std::memcpy(ck.data() + (2 * j) * static_cast<size_t>(N), wk.cur.data(), bytes);
      std::memcpy(ck.data() + (2 * j + 1) * static_cast<size_t>(N), wk.s.data(), bytes);
    }
    if (k < last) step(wk, g);
  }
  std::vector<T> gs(gout, gout + N), gx(N, T(0)), ge(N), gnew(N);
  bool have_gx = false;
  for (int k = steps - 1; k >= 0; --k) {
    const size_t j = static_cast<size_t>(k / c);
    std::memcpy(wk.cur.data(), ck.data() + (2 * j) * static_cast<size_t>(N), bytes);
    std::memcpy(wk.s.data(), ck.data() + (2 * j + 1) * static_cast<size_t>(N), bytes);
    for (int t = static_cast<int>(j) * c; t < k; ++t) step(wk, g);  // now cur = x_k, s = s_{k-1}
    const T* xk = wk.cur.data();
    const T* s = wk.s.data();
    erode(xk, wk.e.data(), g);
    dilate(wk.e.data(), wk.o.data(), wk.tmp.data(), g);
    const T* o = wk.o.data();
    T* gdq = wk.tmp.data();  // dL/dδ · q, the direct part of dL/dx_k
    for (int64_t i = 0; i < N; ++i) {
      const T d0 = xk[i] - o[i];
      const T delta = relu(d0);
      const T sd = s[i] * delta;
      const T z = delta - sd;
      const bool r = z > T(0), q = d0 > T(0);
      const T rd = r ? delta : T(0);
      const T gsi = gs[i];
      const T gdelta = r ? gsi * (T(1) - s[i]) : T(0);  // ∂L/∂δ_k = G_s·r·(1 − s_{k−1})
      gs[i] = gsi * (T(1) - rd);                        // ∂L/∂s_{k−1} = G_s·(1 − r·δ_k)
      gdq[i] = q ? gdelta : T(0);
      ge[i] = have_gx ? gx[i] : T(0);                   // ∂L/∂e_k = ∂L/∂x_{k+1} − dilate^T(∂L/∂δ_k·q)
      gnew[i] = -gdq[i];
    }
    dilate_backward(wk.e.data(), wk.o.data(), gnew.data(), ge.data(), g);
    for (int64_t i = 0; i < N; ++i) gx[i] = gdq[i];     // ∂L/∂x_k = ∂L/∂δ_k·q + erode^T(∂L/∂e_k)
    erode_backward(xk, ge.data(), gx.data(), g);
    have_gx = true;
  }
  std::memcpy(gin, gx.data(), bytes);
}

Geom make_geom(int64_t R, int64_t H, int64_t W, int64_t D, int nd) {
  if (R < 1 || H < 1 || W < 1 || D < 1)
    throw std::invalid_argument("soft skeleton: expected positive sizes, got R=" + std::to_string(R) + " H=" +
                                std::to_string(H) + " W=" + std::to_string(W) + " D=" + std::to_string(D));
  if (nd != 2 && nd != 3) throw std::invalid_argument("soft skeleton: nd must be 2 or 3, got " + std::to_string(nd));
  if (nd == 2 && D != 1) throw std::invalid_argument("soft skeleton: a 2D image has D = 1");
  Geom g{};
  g.H = H;
  g.W = W;
  g.D = D;
  g.sW = D;
  g.sH = W * D;
  g.N = H * W * D;
  g.three_d = nd == 3;
  return g;
}

template <typename T>
void forward_all(const T* x, T* out, int64_t R, const Geom& g, int iters, int threads) {
  parallel_for(R, threads, [&](int64_t b, int64_t e) {
    Work<T> wk(g.N);
    for (int64_t r = b; r < e; ++r) forward_plane(x + r * g.N, out + r * g.N, g, iters, wk);
  });
}

template <typename T>
void backward_all(const T* x, const T* go, T* gi, int64_t R, const Geom& g, int iters, int threads) {
  parallel_for(R, threads, [&](int64_t b, int64_t e) {
    Work<T> wk(g.N);
    for (int64_t r = b; r < e; ++r) backward_plane(x + r * g.N, go + r * g.N, gi + r * g.N, g, iters, wk);
  });
}

}  // namespace

void soft_skeleton_forward_cpu(const void* x, void* out, int64_t R, int64_t H, int64_t W, int64_t D, int nd,
                               int iters, int elem, int threads) {
  const Geom g = make_geom(R, H, W, D, nd);
  if (iters < 0) throw std::invalid_argument("soft skeleton: iters must be >= 0");
  if (elem == 4)
    forward_all(static_cast<const float*>(x), static_cast<float*>(out), R, g, iters, threads);
  else if (elem == 8)
    forward_all(static_cast<const double*>(x), static_cast<double*>(out), R, g, iters, threads);
  else
    throw std::invalid_argument("soft skeleton: elem must be 4 or 8, got " + std::to_string(elem));
}

void soft_skeleton_backward_cpu(const void* x, const void* grad_out, void* grad_in, int64_t R, int64_t H, int64_t W,
                                int64_t D, int nd, int iters, int elem, int threads) {
  const Geom g = make_geom(R, H, W, D, nd);
  if (iters < 0) throw std::invalid_argument("soft skeleton: iters must be >= 0");
  if (elem == 4)
    backward_all(static_cast<const float*>(x), static_cast<const float*>(grad_out), static_cast<float*>(grad_in), R,
                 g, iters, threads);
  else if (elem == 8)
    backward_all(static_cast<const double*>(x), static_cast<const double*>(grad_out), static_cast<double*>(grad_in), R,
                 g, iters, threads);
  else
    throw std::invalid_argument("soft skeleton: elem must be 4 or 8, got " + std::to_string(elem));
}

}  // namespace fastloss
