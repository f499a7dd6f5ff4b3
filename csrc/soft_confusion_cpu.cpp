// The soft confusion matrix on the CPU; semantics in soft_confusion_cpu.h and fastloss/ops/soft_confusion.py.
//
// Per tile of kTile voxels: the softmax of each voxel in x's type (max, exp(x − max), sum, divide; for float the
// polynomial exp of cpu_math.h, ~1 ulp, for double the C library's), then
//   forward:  S_tile[l, c] = Σ_{j : y_j = l} p_c(j), for C <= kMaskedMaxC as C·C masked sums over the tile in
//             explicit lanes (one native register: 4/8/16 floats, 2/4/8 doubles) reduced by a fixed tree, else one
//             scatter per voxel; the tiles' sums added in double in tile order;
//   backward: dx_c(j) = p_c(j)·(G[y_j, c] − Σ_k p_k(j)·G[y_j, k]), the row G[y_j] gathered by C compare-selects
//             (C <= kMaskedMaxC) or a lookup.
// The order of every addition is fixed by the tiles and lanes, so the bits do not depend on the thread count.
// The loops are compiled for the baseline, AVX2 and AVX-512 (target attributes; one is picked at run time as for
// the statistics kernels, FASTLOSS_CPU_ISA lowering it); instruction sets differ by the lane count's rounding only
// (no multiply-add is contracted: fp-contract=off). Lanes wider than one register are avoided on purpose: GCC 12.2
// at -O3 miscompiled a 16-lane masked sum of doubles for AVX2 and AVX-512 (and of floats for AVX2), while the
// one-register forms were right on every instruction set (checked in a standalone reproduction).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

#include "soft_confusion_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_math.h"
#include "parallel.h"
#include "stats_cpu.h"

#if defined(__GNUC__)
#define SC_INLINE inline __attribute__((always_inline))
#else
#define SC_INLINE inline
#endif

namespace fastloss {
namespace {

constexpr int64_t kTile = 1024;      // voxels per work item (the C·kTile probabilities stay in L1/L2)
constexpr int64_t kPad = 16;         // the last tile's voxels padded to a multiple of every lane count
constexpr int64_t kMaskedMaxC = 16;  // up to this many classes the C·C masked form; above it the scatter

SC_INLINE float exp_nonpos(float v) { return cpu_math::vexp_nonpos(v); }
SC_INLINE double exp_nonpos(double v) { return std::exp(v); }

// The tile's labels in an integer of T's width, so that a compare-select of labels and values has one lane width.
template <typename T>
using Lab = typename std::conditional<sizeof(T) == 8, int64_t, int32_t>::type;

// Per-tile scratch, one per worker thread: p (C × kTile), the tile's labels (−1: in no class), the per-voxel
// maximum / sum / dot, and the gathered gradient rows (C × kTile, backward only).
template <typename T>
struct Scratch {
  std::vector<T> p, mx, sum, dot, g;
  std::vector<Lab<T>> lab;
  explicit Scratch(int64_t C, bool backward)
      : p(static_cast<size_t>(C * kTile)), mx(kTile), sum(kTile), dot(kTile),
        g(backward ? static_cast<size_t>(C * kTile) : 0), lab(kTile) {}
};

// The tile's labels, −1 for a label outside [0, C); positions n..n_pad−1 (the last tile's padding) −1 too.
template <typename L>
SC_INLINE void tile_labels(const int64_t* lab, int64_t C, int64_t n, int64_t n_pad, L* out) {
  for (int64_t j = 0; j < n; ++j) {
    const int64_t l = lab[j];
    out[j] = (l >= 0 && l < C) ? static_cast<L>(l) : L(-1);
  }
  for (int64_t j = n; j < n_pad; ++j) out[j] = -1;
}

// p[c·kTile + j] = softmax over c of x[b, c, v0 + j] for j < n; 0 for n <= j < n_pad (finite padding).
template <typename T>
SC_INLINE void tile_softmax(const T* xb, int64_t C, int64_t N, int64_t v0, int64_t n, int64_t n_pad, T* p, T* mx,
                            T* sum) {
  for (int64_t j = 0; j < n; ++j) mx[j] = xb[v0 + j];
  for (int64_t c = 1; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    for (int64_t j = 0; j < n; ++j) mx[j] = xc[j] > mx[j] ? xc[j] : mx[j];
  }
  for (int64_t j = 0; j < n; ++j) sum[j] = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    T* pc = p + c * kTile;
    for (int64_t j = 0; j < n; ++j) {
      pc[j] = exp_nonpos(xc[j] - mx[j]);  // x − max <= 0 (NaN stays NaN)
      sum[j] += pc[j];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    T* pc = p + c * kTile;
    for (int64_t j = 0; j < n; ++j) pc[j] = pc[j] / sum[j];
    for (int64_t j = n; j < n_pad; ++j) pc[j] = T(0);
  }
}

// kL lanes to one value by a fixed tree (halving: lane k += lane k + h).
template <typename T, int64_t kL>
SC_INLINE T lane_tree(T* a) {
  for (int64_t h = kL / 2; h >= 1; h /= 2)
    for (int64_t k = 0; k < h; ++k) a[k] = a[k] + a[k + h];
  return a[0];
}

// One tile's C × C partial sums into st (doubles, overwritten); kL lanes (one register of T).
template <typename T, int64_t kL>
SC_INLINE void forward_tile(const T* xb, const int64_t* labb, int64_t C, int64_t N, int64_t v0, int64_t n, double* st,
                            Scratch<T>& s) {
  const int64_t n_pad = (n + kPad - 1) / kPad * kPad;
  tile_labels(labb + v0, C, n, n_pad, s.lab.data());
  tile_softmax(xb, C, N, v0, n, n_pad, s.p.data(), s.mx.data(), s.sum.data());
  const Lab<T>* lab = s.lab.data();
  if (C <= kMaskedMaxC) {
    // S_tile[l, c] = Σ_j [y_j = l]·p_c(j): a masked sum per (l, c), lane k summing voxels j ≡ k (mod kL)
    for (int64_t l = 0; l < C; ++l) {
      const Lab<T> li = static_cast<Lab<T>>(l);
      for (int64_t c = 0; c < C; ++c) {
        const T* pc = s.p.data() + c * kTile;
        alignas(64) T acc[kL] = {};
        for (int64_t j0 = 0; j0 < n_pad; j0 += kL)
          for (int64_t k = 0; k < kL; ++k) acc[k] += lab[j0 + k] == li ? pc[j0 + k] : T(0);
        st[l * C + c] = static_cast<double>(lane_tree<T, kL>(acc));
      }
    }
    return;
  }
  for (int64_t k = 0; k < C * C; ++k) st[k] = 0.0;
  for (int64_t j = 0; j < n; ++j) {  // many classes: one row update per voxel, in voxel order
    const int64_t l = lab[j];
    if (l < 0) continue;
    double* row = st + l * C;
    for (int64_t c = 0; c < C; ++c) row[c] += static_cast<double>(s.p[static_cast<size_t>(c * kTile + j)]);
  }
}

// One tile's dx; G: the C × C gradient in x's type.
template <typename T>
SC_INLINE void backward_tile(const T* xb, const int64_t* labb, const T* G, int64_t C, int64_t N, int64_t v0, int64_t n,
                             T* dxb, Scratch<T>& s) {
  const int64_t n_pad = (n + kPad - 1) / kPad * kPad;
  tile_labels(labb + v0, C, n, n_pad, s.lab.data());
  tile_softmax(xb, C, N, v0, n, n_pad, s.p.data(), s.mx.data(), s.sum.data());
  const Lab<T>* lab = s.lab.data();
  T* gsel = s.g.data();  // gsel[c·kTile + j] = G[y_j, c], 0 for a voxel in no class
  if (C <= kMaskedMaxC) {
    for (int64_t c = 0; c < C; ++c) {
      T* gc = gsel + c * kTile;
      for (int64_t j = 0; j < n_pad; ++j) gc[j] = T(0);
      for (int64_t l = 0; l < C; ++l) {
        const Lab<T> li = static_cast<Lab<T>>(l);
        const T v = G[l * C + c];
        for (int64_t j = 0; j < n_pad; ++j) gc[j] = lab[j] == li ? v : gc[j];
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      T* gc = gsel + c * kTile;
      for (int64_t j = 0; j < n; ++j) gc[j] = lab[j] >= 0 ? G[static_cast<int64_t>(lab[j]) * C + c] : T(0);
    }
  }
  // dL/dp_c = G[y, c]; softmax Jacobian: dL/dx_c = p_c·(dL/dp_c − Σ_k p_k·dL/dp_k), the dot summed over k in order
  T* dot = s.dot.data();
  for (int64_t j = 0; j < n; ++j) dot[j] = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T* pc = s.p.data() + c * kTile;
    const T* gc = gsel + c * kTile;
    for (int64_t j = 0; j < n; ++j) dot[j] += pc[j] * gc[j];
  }
  for (int64_t c = 0; c < C; ++c) {
    const T* pc = s.p.data() + c * kTile;
    const T* gc = gsel + c * kTile;
    T* out = dxb + c * N + v0;
    for (int64_t j = 0; j < n; ++j) out[j] = pc[j] * (gc[j] - dot[j]);
  }
}

// The tile loops, one copy per instruction set (the always-inline bodies above are compiled into each).
struct Args {
  const void* x;
  const int64_t* labels;
  const void* G;  // backward: C·C values of x's type per batch item
  void* out;      // forward: double partials (tiles × C·C); backward: dx
  int64_t C, N, tiles;
};

#define FL_SC_TILE_LOOPS(SUFFIX, ATTR, VBYTES)                                                                            \
  template <typename T>                                                                                            \
  ATTR void forward_items_##SUFFIX(const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {                      \
    for (int64_t t = begin; t < end; ++t) {                                                                         \
      const int64_t b = t / a.tiles, v0 = (t % a.tiles) * kTile, n = std::min(kTile, a.N - v0);                     \
      forward_tile<T, VBYTES / sizeof(T)>(static_cast<const T*>(a.x) + b * a.C * a.N, a.labels + b * a.N, a.C, a.N, v0, n,                 \
                   static_cast<double*>(a.out) + t * a.C * a.C, s);                                                 \
    }                                                                                                               \
  }                                                                                                                 \
  template <typename T>                                                                                            \
  ATTR void backward_items_##SUFFIX(const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {                     \
    for (int64_t t = begin; t < end; ++t) {                                                                         \
      const int64_t b = t / a.tiles, v0 = (t % a.tiles) * kTile, n = std::min(kTile, a.N - v0);                     \
      backward_tile(static_cast<const T*>(a.x) + b * a.C * a.N, a.labels + b * a.N,                                 \
                    static_cast<const T*>(a.G) + b * a.C * a.C, a.C, a.N, v0, n,                                    \
                    static_cast<T*>(a.out) + b * a.C * a.N, s);                                                     \
    }                                                                                                               \
  }

FL_SC_TILE_LOOPS(base, , 16)
#if defined(FASTLOSS_X86_CLONES) && defined(__GNUC__) && !defined(__clang__)
#define FL_SC_CLONES 1
FL_SC_TILE_LOOPS(avx2, __attribute__((target("avx2,fma"))), 32)
FL_SC_TILE_LOOPS(avx512, __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512"))), 64)
#endif

enum class Isa { kBase, kAvx2, kAvx512 };

// The statistics kernels' choice (cpuid, lowered by FASTLOSS_CPU_ISA), so that one variable switches every kernel.
Isa isa() {
#if defined(FL_SC_CLONES)
  const char* name = stats_cpu_isa();
  if (std::strcmp(name, "avx512") == 0) return Isa::kAvx512;
  if (std::strcmp(name, "avx2") == 0) return Isa::kAvx2;
#endif
  return Isa::kBase;
}

template <typename T>
void forward_items(Isa which, const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {
#if defined(FL_SC_CLONES)
  if (which == Isa::kAvx512) return forward_items_avx512<T>(a, begin, end, s);
  if (which == Isa::kAvx2) return forward_items_avx2<T>(a, begin, end, s);
#endif
  (void)which;
  forward_items_base<T>(a, begin, end, s);
}

template <typename T>
void backward_items(Isa which, const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {
#if defined(FL_SC_CLONES)
  if (which == Isa::kAvx512) return backward_items_avx512<T>(a, begin, end, s);
  if (which == Isa::kAvx2) return backward_items_avx2<T>(a, begin, end, s);
#endif
  (void)which;
  backward_items_base<T>(a, begin, end, s);
}

template <typename T>
void forward(const T* x, const int64_t* labels, int64_t B, int64_t C, int64_t N, double* S, int threads) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> part(static_cast<size_t>(B * tiles * C * C));
  const Args a{x, labels, nullptr, part.data(), C, N, tiles};
  const Isa which = isa();
  parallel_for(B * tiles, resolve_threads(threads), [&](int64_t begin, int64_t end) {
    Scratch<T> s(C, false);
    forward_items<T>(which, a, begin, end, s);
  });
  for (int64_t b = 0; b < B; ++b) {  // tiles in order: the same additions whatever the thread count
    double* sb = S + b * C * C;
    for (int64_t k = 0; k < C * C; ++k) sb[k] = 0.0;
    for (int64_t t = 0; t < tiles; ++t) {
      const double* st = part.data() + (b * tiles + t) * C * C;
      for (int64_t k = 0; k < C * C; ++k) sb[k] += st[k];
    }
  }
}

template <typename T>
void backward(const T* x, const int64_t* labels, const double* G, int64_t B, int64_t C, int64_t N, T* dx, int threads) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<T> g(static_cast<size_t>(B * C * C));
  for (size_t k = 0; k < g.size(); ++k) g[k] = static_cast<T>(G[k]);
  const Args a{x, labels, g.data(), dx, C, N, tiles};
  const Isa which = isa();
  parallel_for(B * tiles, resolve_threads(threads), [&](int64_t begin, int64_t end) {
    Scratch<T> s(C, true);
    backward_items<T>(which, a, begin, end, s);
  });
}

void check(int64_t B, int64_t C, int64_t N, int elem) {
  if (B < 1 || C < 1 || N < 1) throw std::invalid_argument("soft confusion: expected positive sizes");
  if (C > (int64_t(1) << 30)) throw std::invalid_argument("soft confusion: too many classes");
  if (elem != 4 && elem != 8) throw std::invalid_argument("soft confusion: elem must be 4 or 8, got " + std::to_string(elem));
}

}  // namespace

void soft_confusion_forward_cpu(const void* x, const int64_t* labels, int64_t B, int64_t C, int64_t N, int elem,
                                double* S, int threads) {
  check(B, C, N, elem);
  if (elem == 4) forward(static_cast<const float*>(x), labels, B, C, N, S, threads);
  else forward(static_cast<const double*>(x), labels, B, C, N, S, threads);
}

void soft_confusion_backward_cpu(const void* x, const int64_t* labels, const double* G, int64_t B, int64_t C,
                                 int64_t N, int elem, void* dx, int threads) {
  check(B, C, N, elem);
  if (elem == 4) backward(static_cast<const float*>(x), labels, G, B, C, N, static_cast<float*>(dx), threads);
  else backward(static_cast<const double*>(x), labels, G, B, C, N, static_cast<double*>(dx), threads);
}

}  // namespace fastloss
