// NACL's neighbourhood penalty on the CPU; semantics in nacl_cpu.h and fastloss/ops/neighbourhood.py.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

#include "nacl_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_math.h"
#include "parallel.h"
#include "stats_cpu.h"

namespace fastloss {
namespace {

#if defined(__GNUC__)
#define NACL_INLINE inline __attribute__((always_inline))
#else
#define NACL_INLINE inline
#endif

// out[i] = Σ_t w[t]·in[i + (t − left)·st] along one axis of length n (zero outside), for every line of that axis.
// Lines: `outer` blocks of `n` positions, each position a run of `inner` contiguous values.
NACL_INLINE void filter_axis(const float* in, float* out, int64_t outer, int64_t n, int64_t inner, const std::vector<float>& w,
                 int64_t left) {
  const int64_t k = static_cast<int64_t>(w.size());
  if (inner == 1) {  // along contiguous rows: the same sums in the same order, the loop over positions innermost
    for (int64_t o = 0; o < outer; ++o) {
      const float* src = in + o * n;
      float* dst = out + o * n;
      for (int64_t i = 0; i < n; ++i) dst[i] = 0.0f;
      for (int64_t t = 0; t < k; ++t) {
        const int64_t sh = t - left;  // dst[i] += w[t]·src[i + sh] for 0 <= i + sh < n
        const int64_t lo = sh < 0 ? -sh : 0, hi = sh > 0 ? n - sh : n;
        const float wt = w[static_cast<size_t>(t)];
        for (int64_t i = lo; i < hi; ++i) {
          const float prod = wt * src[i + sh];
          dst[i] = dst[i] + prod;
        }
      }
    }
    return;
  }
  for (int64_t o = 0; o < outer; ++o) {
    const float* src = in + o * n * inner;
    float* dst = out + o * n * inner;
    for (int64_t i = 0; i < n; ++i) {
      float* d = dst + i * inner;
      for (int64_t j = 0; j < inner; ++j) d[j] = 0.0f;
      for (int64_t t = 0; t < k; ++t) {  // kernel order, as a convolution sums it
        const int64_t s = i + t - left;
        if (s < 0 || s >= n) continue;
        const float wt = w[static_cast<size_t>(t)];
        const float* sr = src + s * inner;
        for (int64_t j = 0; j < inner; ++j) {
          const float prod = wt * sr[j];
          d[j] = d[j] + prod;
        }
      }
    }
  }
}

template <typename T>
void planes(const T* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D, int nd,
            const std::vector<float>& w, int64_t left, float scale, int distance, double* sums, T* deriv,
            int threads) {
  const int64_t N = H * W * D;
  parallel_for(B * C, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> a(static_cast<size_t>(N)), b(static_cast<size_t>(N));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bi = r / C, c = r % C;
      const int64_t* lab = labels + bi * N;
      for (int64_t i = 0; i < N; ++i) a[static_cast<size_t>(i)] = lab[i] == c ? 1.0f : 0.0f;
      // MONAI's order: axis h, then w, then d
      filter_axis(a.data(), b.data(), 1, H, W * D, w, left);
      if (nd >= 2) filter_axis(b.data(), a.data(), H, W, D, w, left);
      else std::memcpy(a.data(), b.data(), sizeof(float) * static_cast<size_t>(N));
      const float* u = a.data();
      if (nd == 3) {
        filter_axis(a.data(), b.data(), H * W, D, 1, w, left);
        u = b.data();
      }
      const T* xr = x + r * N;
      T* dr = deriv ? deriv + r * N : nullptr;
      double acc = 0.0;
      for (int64_t i = 0; i < N; ++i) {
        const float uf = u[i] * scale;
        const T diff = xr[i] - static_cast<T>(uf);
        if (distance == 1) {
          acc += static_cast<double>(std::fabs(diff));
          if (dr) dr[i] = diff > T(0) ? T(1) : (diff < T(0) ? T(-1) : T(0));
        } else {
          const T sq = diff * diff;
          acc += static_cast<double>(sq);
          if (dr) dr[i] = diff * T(2);
        }
      }
      sums[r] = acc;
    }
  });
}


// ------------------------------------------------------------------------------- the fused NACL loss (CE + penalty)
// The labels as int32, −1 for a label outside [0, C) (in no class: no CE term, u = 0 in every class).
void compact_labels(const int64_t* labels, int64_t n, int64_t C, int32_t* out, int threads) {
  parallel_for((n + 65535) / 65536, threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * 65536; i < std::min(n, end * 65536); ++i) {
      const int64_t l = labels[i];
      out[i] = (l >= 0 && l < C) ? static_cast<int32_t>(l) : -1;
    }
  });
}

NACL_INLINE float nacl_exp(float v) { return cpu_math::vexp_nonpos(v); }
NACL_INLINE double nacl_exp(double v) { return std::exp(v); }
NACL_INLINE float nacl_log(float v) { return cpu_math::vlog(v); }
NACL_INLINE double nacl_log(double v) { return std::log(v); }

constexpr int64_t kTile = 1024;  // voxels per CE work item

struct Geometry {
  int64_t B, C, H, W, D, N;
  int nd;
};

// u of plane (b, c): the indicator of label c filtered along h, w, d (MONAI's order), unscaled; returns the buffer
// holding it (a or b).
NACL_INLINE const float* plane_u(const int32_t* lab, int32_t c, const Geometry& g, const std::vector<float>& w,
                                 int64_t left, std::vector<float>& a, std::vector<float>& b) {
  for (int64_t i = 0; i < g.N; ++i) a[static_cast<size_t>(i)] = lab[i] == c ? 1.0f : 0.0f;
  filter_axis(a.data(), b.data(), 1, g.H, g.W * g.D, w, left);
  if (g.nd >= 2) filter_axis(b.data(), a.data(), g.H, g.W, g.D, w, left);
  else std::memcpy(a.data(), b.data(), sizeof(float) * static_cast<size_t>(g.N));
  if (g.nd == 3) {
    filter_axis(a.data(), b.data(), g.H * g.W, g.D, 1, w, left);
    return b.data();
  }
  return a.data();
}

// Σ over the plane of |x − u| (kDist 1) or (x − u)² (kDist 2) in kL double lanes and a fixed tree (u = the filtered
// value × scale in float32, then cast to T: the torch backend's u bits).
template <typename T, int64_t kL, int kDist>
NACL_INLINE double plane_penalty_d(const T* xr, const float* u, int64_t N, float scale) {
  alignas(64) double acc[kL] = {};
  const int64_t full = N / kL * kL;
  for (int64_t i0 = 0; i0 < full; i0 += kL)
    for (int64_t k = 0; k < kL; ++k) {
      const T diff = xr[i0 + k] - static_cast<T>(u[i0 + k] * scale);
      const T term = kDist == 1 ? (diff < T(0) ? -diff : diff) : diff * diff;
      acc[k] += static_cast<double>(term);
    }
  for (int64_t i = full; i < N; ++i) {
    const T diff = xr[i] - static_cast<T>(u[i] * scale);
    const T term = kDist == 1 ? (diff < T(0) ? -diff : diff) : diff * diff;
    acc[i - full] += static_cast<double>(term);
  }
  for (int64_t h = kL / 2; h >= 1; h /= 2)
    for (int64_t k = 0; k < h; ++k) acc[k] = acc[k] + acc[k + h];
  return acc[0];
}

template <typename T, int64_t kL>
NACL_INLINE double plane_penalty(const T* xr, const float* u, int64_t N, float scale, int distance) {
  return distance == 1 ? plane_penalty_d<T, kL, 1>(xr, u, N, scale) : plane_penalty_d<T, kL, 2>(xr, u, N, scale);
}

// dx of plane (b, c) = gp·sign(x − u) (L1) or gp·2(x − u) (L2): d|x − u|/dx = sign(x − u), d(x − u)²/dx = 2(x − u).
template <typename T>
NACL_INLINE void plane_grad(const T* xr, const float* u, int64_t N, float scale, int distance, T gp, T* dr) {
  if (distance == 1) {
    for (int64_t i = 0; i < N; ++i) {
      const T diff = xr[i] - static_cast<T>(u[i] * scale);
      dr[i] = gp * (diff > T(0) ? T(1) : (diff < T(0) ? T(-1) : T(0)));
    }
  } else {
    for (int64_t i = 0; i < N; ++i) {
      const T diff = xr[i] - static_cast<T>(u[i] * scale);
      dr[i] = gp * (diff * T(2));
    }
  }
}

// The CE of one tile of batch item b: Σ_j −log p_y(j) = Σ_j [log Σ_c e^{x_c − m} − (x_y − m)], m = max_c x_c, in kL
// lanes of T and a fixed tree. mx, se, xy: kTile scratch each.
template <typename T, int64_t kL>
NACL_INLINE double tile_ce(const T* xb, const int32_t* lab, int64_t C, int64_t N, int64_t v0, int64_t n, T* mx, T* se,
                           T* xy) {
  for (int64_t j = 0; j < n; ++j) mx[j] = xb[v0 + j];
  for (int64_t c = 1; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    for (int64_t j = 0; j < n; ++j) mx[j] = xc[j] > mx[j] ? xc[j] : mx[j];
  }
  for (int64_t j = 0; j < n; ++j) se[j] = T(0);
  for (int64_t j = 0; j < n; ++j) xy[j] = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    const int32_t ci = static_cast<int32_t>(c);
    for (int64_t j = 0; j < n; ++j) {
      se[j] += nacl_exp(xc[j] - mx[j]);
      xy[j] = lab[v0 + j] == ci ? xc[j] - mx[j] : xy[j];
    }
  }
  alignas(64) T acc[kL] = {};
  const int64_t full = n / kL * kL;
  for (int64_t j0 = 0; j0 < full; j0 += kL)
    for (int64_t k = 0; k < kL; ++k) {
      const int64_t j = j0 + k;
      acc[k] += lab[v0 + j] >= 0 ? nacl_log(se[j]) - xy[j] : T(0);
    }
  for (int64_t j = full; j < n; ++j) acc[j - full] += lab[v0 + j] >= 0 ? nacl_log(se[j]) - xy[j] : T(0);
  for (int64_t h = kL / 2; h >= 1; h /= 2)
    for (int64_t k = 0; k < h; ++k) acc[k] = acc[k] + acc[k + h];
  return static_cast<double>(acc[0]);
}

// dx[b, :, tile] += gce·(p_c − [y = c]) (d(−log p_y)/dx_c = p_c − [y = c]); voxels in no class get nothing.
template <typename T>
NACL_INLINE void tile_ce_grad(const T* xb, const int32_t* lab, int64_t C, int64_t N, int64_t v0, int64_t n, T gce,
                              T* dxb, T* mx, T* se) {
  for (int64_t j = 0; j < n; ++j) mx[j] = xb[v0 + j];
  for (int64_t c = 1; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    for (int64_t j = 0; j < n; ++j) mx[j] = xc[j] > mx[j] ? xc[j] : mx[j];
  }
  for (int64_t j = 0; j < n; ++j) se[j] = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    for (int64_t j = 0; j < n; ++j) se[j] += nacl_exp(xc[j] - mx[j]);
  }
  for (int64_t j = 0; j < n; ++j) se[j] = lab[v0 + j] >= 0 ? gce / se[j] : T(0);  // gce / Σ e^{x − m}, 0: no class
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    T* out = dxb + c * N + v0;
    const int32_t ci = static_cast<int32_t>(c);
    for (int64_t j = 0; j < n; ++j) {
      const T pg = nacl_exp(xc[j] - mx[j]) * se[j];  // gce·p_c
      const T yg = lab[v0 + j] == ci ? gce : T(0);
      out[j] = out[j] + (pg - yg);
    }
  }
}

struct LossArgs {
  Geometry g;
  const void* x;
  const int32_t* lab;
  const std::vector<float>* w;
  int64_t left;
  float scale;
  int distance;
  double* pen;     // forward: B·C plane sums
  double* ce;      // forward: B·tiles tile sums
  const double* gpen;  // backward: B·C
  const double* gce;   // backward: B
  void* dx;        // backward
  int64_t tiles;
};

#define FL_NACL_LOOPS(SUFFIX, ATTR, VBYTES)                                                                         \
  template <typename T>                                                                                            \
  ATTR void planes_fwd_##SUFFIX(const LossArgs& a, int64_t begin, int64_t end, std::vector<float>& ba,             \
                                std::vector<float>& bb) {                                                          \
    const Geometry& g = a.g;                                                                                        \
    for (int64_t r = begin; r < end; ++r) {                                                                         \
      const int64_t bi = r / g.C, c = r % g.C;                                                                      \
      const float* u = plane_u(a.lab + bi * g.N, static_cast<int32_t>(c), g, *a.w, a.left, ba, bb);                \
      a.pen[r] = plane_penalty<T, VBYTES / 8>(static_cast<const T*>(a.x) + r * g.N, u, g.N, a.scale, a.distance);  \
      if (a.dx != nullptr) /* the gradient for the weights gpen, from the same u */                                 \
        plane_grad<T>(static_cast<const T*>(a.x) + r * g.N, u, g.N, a.scale, a.distance,                           \
                      static_cast<T>(a.gpen[r]), static_cast<T*>(a.dx) + r * g.N);                                  \
    }                                                                                                               \
  }                                                                                                                 \
  template <typename T>                                                                                            \
  ATTR void planes_bwd_##SUFFIX(const LossArgs& a, int64_t begin, int64_t end, std::vector<float>& ba,             \
                                std::vector<float>& bb) {                                                          \
    const Geometry& g = a.g;                                                                                        \
    for (int64_t r = begin; r < end; ++r) {                                                                         \
      const int64_t bi = r / g.C, c = r % g.C;                                                                      \
      const float* u = plane_u(a.lab + bi * g.N, static_cast<int32_t>(c), g, *a.w, a.left, ba, bb);                \
      plane_grad<T>(static_cast<const T*>(a.x) + r * g.N, u, g.N, a.scale, a.distance,                             \
                    static_cast<T>(a.gpen[r]), static_cast<T*>(a.dx) + r * g.N);                                    \
    }                                                                                                               \
  }                                                                                                                 \
  template <typename T>                                                                                            \
  ATTR void tiles_fwd_##SUFFIX(const LossArgs& a, int64_t begin, int64_t end, T* s0, T* s1, T* s2) {                \
    const Geometry& g = a.g;                                                                                        \
    for (int64_t t = begin; t < end; ++t) {                                                                         \
      const int64_t b = t / a.tiles, v0 = (t % a.tiles) * kTile, n = std::min(kTile, g.N - v0);                     \
      a.ce[t] = tile_ce<T, VBYTES / sizeof(T)>(static_cast<const T*>(a.x) + b * g.C * g.N, a.lab + b * g.N, g.C,   \
                                                g.N, v0, n, s0, s1, s2);                                            \
      if (a.dx != nullptr)                                                                                          \
        tile_ce_grad<T>(static_cast<const T*>(a.x) + b * g.C * g.N, a.lab + b * g.N, g.C, g.N, v0, n,               \
                        static_cast<T>(a.gce[b]), static_cast<T*>(a.dx) + b * g.C * g.N, s0, s1);                   \
    }                                                                                                               \
  }                                                                                                                 \
  template <typename T>                                                                                            \
  ATTR void tiles_bwd_##SUFFIX(const LossArgs& a, int64_t begin, int64_t end, T* s0, T* s1) {                       \
    const Geometry& g = a.g;                                                                                        \
    for (int64_t t = begin; t < end; ++t) {                                                                         \
      const int64_t b = t / a.tiles, v0 = (t % a.tiles) * kTile, n = std::min(kTile, g.N - v0);                     \
      tile_ce_grad<T>(static_cast<const T*>(a.x) + b * g.C * g.N, a.lab + b * g.N, g.C, g.N, v0, n,                 \
                      static_cast<T>(a.gce[b]), static_cast<T*>(a.dx) + b * g.C * g.N, s0, s1);                     \
    }                                                                                                               \
  }

FL_NACL_LOOPS(base, , 16)
#if defined(FASTLOSS_X86_CLONES) && defined(__GNUC__) && !defined(__clang__)
#define FL_NACL_CLONES 1
FL_NACL_LOOPS(avx2, __attribute__((target("avx2,fma"))), 32)
FL_NACL_LOOPS(avx512, __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512"))), 64)
#endif

// 0 base, 1 AVX2, 2 AVX-512: the statistics kernels' choice (cpuid, lowered by FASTLOSS_CPU_ISA).
int nacl_isa() {
#if defined(FL_NACL_CLONES)
  const char* name = stats_cpu_isa();
  if (std::strcmp(name, "avx512") == 0) return 2;
  if (std::strcmp(name, "avx2") == 0) return 1;
#endif
  return 0;
}

#if defined(FL_NACL_CLONES)
#define FL_NACL_DISPATCH(FN, ...)                          \
  do {                                                     \
    if (isa == 2) FN##_avx512<T>(__VA_ARGS__);             \
    else if (isa == 1) FN##_avx2<T>(__VA_ARGS__);          \
    else FN##_base<T>(__VA_ARGS__);                        \
  } while (0)
#else
#define FL_NACL_DISPATCH(FN, ...) FN##_base<T>(__VA_ARGS__)
#endif

template <typename T>
void loss_forward(LossArgs& a, int threads) {
  const int isa = nacl_isa();
  const Geometry& g = a.g;
  parallel_for(g.B * g.C, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> ba(static_cast<size_t>(g.N)), bb(static_cast<size_t>(g.N));
    FL_NACL_DISPATCH(planes_fwd, a, begin, end, ba, bb);
  });
  parallel_for(g.B * a.tiles, threads, [&](int64_t begin, int64_t end) {
    std::vector<T> s(static_cast<size_t>(3 * kTile));
    FL_NACL_DISPATCH(tiles_fwd, a, begin, end, s.data(), s.data() + kTile, s.data() + 2 * kTile);
  });
  (void)isa;
}

template <typename T>
void loss_backward(LossArgs& a, int threads) {
  const int isa = nacl_isa();
  const Geometry& g = a.g;
  // the penalty's part first (it writes every element), then the CE's part added to it
  parallel_for(g.B * g.C, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> ba(static_cast<size_t>(g.N)), bb(static_cast<size_t>(g.N));
    FL_NACL_DISPATCH(planes_bwd, a, begin, end, ba, bb);
  });
  parallel_for(g.B * a.tiles, threads, [&](int64_t begin, int64_t end) {
    std::vector<T> s(static_cast<size_t>(2 * kTile));
    FL_NACL_DISPATCH(tiles_bwd, a, begin, end, s.data(), s.data() + kTile);
  });
  (void)isa;
}

void check_geometry(int64_t B, int64_t C, int64_t H, int64_t W, int64_t D, int nd, const std::vector<float>& weights,
                    int64_t left, int distance) {
  if (B < 1 || C < 1 || H < 1 || W < 1 || D < 1)
    throw std::invalid_argument("nacl penalty: expected positive sizes");
  if (C > (int64_t(1) << 30)) throw std::invalid_argument("nacl loss: too many classes");
  if (nd < 1 || nd > 3 || (nd < 3 && D != 1) || (nd < 2 && W != 1))
    throw std::invalid_argument("nacl penalty: nd must be 1 to 3 with the unused sizes 1, got " + std::to_string(nd));
  if (weights.empty()) throw std::invalid_argument("nacl penalty: empty kernel");
  if (left < 0 || left >= static_cast<int64_t>(weights.size()))
    throw std::invalid_argument("nacl penalty: left must lie in [0, kernel size)");
  if (distance != 1 && distance != 2) throw std::invalid_argument("nacl penalty: distance must be 1 (L1) or 2 (L2)");
}

void nacl_loss_run(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D, int nd,
                   const std::vector<float>& weights, int64_t left, float scale, int distance, int elem, double* pen,
                   double* ce, const double* gpen, const double* gce, void* dx, int threads) {
  check_geometry(B, C, H, W, D, nd, weights, left, distance);
  if (elem != 4 && elem != 8) throw std::invalid_argument("nacl loss: elem must be 4 or 8, got " + std::to_string(elem));
  const int t = resolve_threads(threads);
  LossArgs a{};
  a.g = Geometry{B, C, H, W, D, H * W * D, nd};
  std::vector<int32_t> lab(static_cast<size_t>(B * a.g.N));
  compact_labels(labels, B * a.g.N, C, lab.data(), t);
  a.x = x;
  a.lab = lab.data();
  a.w = &weights;
  a.left = left;
  a.scale = scale;
  a.distance = distance;
  a.tiles = (a.g.N + kTile - 1) / kTile;
  const bool backward = dx != nullptr && pen == nullptr;
  std::vector<double> tile_ce_sums;
  a.gpen = gpen;
  a.gce = gce;
  a.dx = dx;  // forward with dx: the sums and, from the same u and softmax, the gradient for the weights gpen, gce
  if (backward) {
    if (elem == 4) loss_backward<float>(a, t);
    else loss_backward<double>(a, t);
    return;
  }
  tile_ce_sums.assign(static_cast<size_t>(B * a.tiles), 0.0);
  a.pen = pen;
  a.ce = tile_ce_sums.data();
  if (elem == 4) loss_forward<float>(a, t);
  else loss_forward<double>(a, t);
  for (int64_t b = 0; b < B; ++b) {  // tiles in order: the same additions whatever the thread count
    double acc = 0.0;
    for (int64_t k = 0; k < a.tiles; ++k) acc += tile_ce_sums[static_cast<size_t>(b * a.tiles + k)];
    ce[b] = acc;
  }
}

}  // namespace

void nacl_penalty_cpu(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D,
                      int nd, const std::vector<float>& weights, int64_t left, float scale, int distance, int elem,
                      double* sums, void* deriv, int threads) {
  if (B < 1 || C < 1 || H < 1 || W < 1 || D < 1)
    throw std::invalid_argument("nacl penalty: expected positive sizes");
  if (nd < 1 || nd > 3 || (nd < 3 && D != 1) || (nd < 2 && W != 1))
    throw std::invalid_argument("nacl penalty: nd must be 1 to 3 with the unused sizes 1, got " + std::to_string(nd));
  if (weights.empty()) throw std::invalid_argument("nacl penalty: empty kernel");
  if (left < 0 || left >= static_cast<int64_t>(weights.size()))
    throw std::invalid_argument("nacl penalty: left must lie in [0, kernel size)");
  if (distance != 1 && distance != 2) throw std::invalid_argument("nacl penalty: distance must be 1 (L1) or 2 (L2)");
  if (elem == 4)
    planes(static_cast<const float*>(x), labels, B, C, H, W, D, nd, weights, left, scale, distance, sums,
           static_cast<float*>(deriv), threads);
  else if (elem == 8)
    planes(static_cast<const double*>(x), labels, B, C, H, W, D, nd, weights, left, scale, distance, sums,
           static_cast<double*>(deriv), threads);
  else
    throw std::invalid_argument("nacl penalty: elem must be 4 or 8, got " + std::to_string(elem));
}

}  // namespace fastloss

namespace fastloss {

void nacl_loss_cpu_forward(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W, int64_t D,
                           int nd, const std::vector<float>& weights, int64_t left, float scale, int distance, int elem,
                           double* pen_sums, double* ce_sums, int threads) {
  if (!pen_sums || !ce_sums) throw std::invalid_argument("nacl loss: null output");
  nacl_loss_run(x, labels, B, C, H, W, D, nd, weights, left, scale, distance, elem, pen_sums, ce_sums, nullptr, nullptr,
                nullptr, threads);
}

void nacl_loss_cpu_forward_grad(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W,
                                int64_t D, int nd, const std::vector<float>& weights, int64_t left, float scale,
                                int distance, int elem, double* pen_sums, double* ce_sums, const double* grad_pen,
                                const double* grad_ce, void* dx, int threads) {
  if (!pen_sums || !ce_sums || !grad_pen || !grad_ce || !dx) throw std::invalid_argument("nacl loss: null pointer");
  nacl_loss_run(x, labels, B, C, H, W, D, nd, weights, left, scale, distance, elem, pen_sums, ce_sums, grad_pen,
                grad_ce, dx, threads);
}

void nacl_loss_cpu_backward(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t H, int64_t W,
                            int64_t D, int nd, const std::vector<float>& weights, int64_t left, float scale,
                            int distance, int elem, const double* grad_pen, const double* grad_ce, void* dx,
                            int threads) {
  if (!grad_pen || !grad_ce || !dx) throw std::invalid_argument("nacl loss: null gradient");
  nacl_loss_run(x, labels, B, C, H, W, D, nd, weights, left, scale, distance, elem, nullptr, nullptr, grad_pen, grad_ce,
                dx, threads);
}

}  // namespace fastloss
