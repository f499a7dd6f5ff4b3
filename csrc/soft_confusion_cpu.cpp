// The soft confusion matrix on the CPU; semantics in soft_confusion_cpu.h and fastloss/ops/soft_confusion.py.
//
// Per tile of kTile voxels: the softmax of each voxel in x's type (max, exp(x − max), sum, divide; for float the
// polynomial exp of cpu_math.h, ~1 ulp, for double the C library's), then
//   forward:  S_tile[l, c] = Σ_{j : y_j = l} p_c(j), for C <= kMaskedMaxC as C·C masked sums over the tile in
//             explicit lanes (one native register: 4/8/16 floats, 2/4/8 doubles) reduced by a fixed tree, else one
//             scatter per voxel; the tiles' sums added in double in tile order;
//   backward: dx_c(j) = p_c(j)·(G[y_j, c] − Σ_k p_k(j)·G[y_j, k]), the row G[y_j] gathered by C compare-selects
//             (C <= kMaskedMaxC) or a lookup.
// The rows contracted with a class-pair weight M (the generalized Wasserstein Dice's sums, O(C) per voxel, not C·C):
//   forward:  w_j = Σ_c M[y_j, c]·p_c(j) in x's type (M[y_j, c] looked up per voxel: with AVX-512 and up to 16
//             classes a lane permutation of one column held in registers, else a table read), then
//             W_tile[y_j] += w_j and n_tile[y_j] += 1 in double, voxel by voxel;
//   and, when the logits need a gradient, the derivative q_c(j) = p_c(j)·(M[y_j, c] − w_j) in the same pass: the
//   backward's dx_c(j) = A[y_j]·q_c(j) (A = dL/dW; dL/dp_c = A[y]·M[y, c], softmax Jacobian) is then one scaling
//   (fastloss/ops/cpu_soft_confusion.py), no second softmax.
// The order of every addition is fixed by the tiles and lanes, so the bits do not depend on the thread count (the
// rows op's sums have no lanes: its bits do not depend on the instruction set either).
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

#if defined(FASTLOSS_X86_CLONES) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

#include "cpu_math.h"
#include "parallel.h"
#include "stats_cpu.h"

#if defined(__GNUC__)
#define SC_INLINE inline __attribute__((always_inline))
#else
#define SC_INLINE inline
#endif
#if defined(__GNUC__) && !defined(__clang__)
#define FL_SC_IVDEP _Pragma("GCC ivdep")
#else
#define FL_SC_IVDEP
#endif


namespace fastloss {
namespace {

constexpr int64_t kTile = 1024;      // voxels per work item (the C·kTile probabilities stay in L1/L2)
constexpr int64_t kPad = 16;         // the last tile's voxels padded to a multiple of every lane count
constexpr int64_t kMaskedMaxC = 16;  // up to this many classes the C·C masked form; above it the scatter
// The rows op's exponentials, one class row per kRowStride values: not a multiple of 4 KiB apart, so that the rows do not
// alias each other (nor the logits' rows, N apart) in the low address bits the load/store unit compares.
constexpr int64_t kRowStride = kTile + 48;

SC_INLINE float exp_nonpos(float v) { return cpu_math::vexp_nonpos(v); }
SC_INLINE double exp_nonpos(double v) { return std::exp(v); }

// The tile's labels in an integer of T's width, so that a compare-select of labels and values has one lane width.
template <typename T>
using Lab = typename std::conditional<sizeof(T) == 8, int64_t, int32_t>::type;

// Per-tile scratch, one per worker thread: p (C × kTile), the tile's labels (−1: in no class), the per-voxel
// maximum / sum / dot, and the gathered gradient rows (C × kTile, backward only).
// The rows op keeps a looked-up column of M in g's first kTile.
template <typename T>
struct Scratch {
  std::vector<T> p, mx, sum, dot, g;
  std::vector<Lab<T>> lab;
  explicit Scratch(int64_t C, bool backward)
      : p(static_cast<size_t>(C * kRowStride)), mx(kTile), sum(kTile), dot(kTile),
        g(static_cast<size_t>(std::max<int64_t>(backward ? C : 0, 1) * kTile)), lab(kTile) {}
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

// Rows op table: column c of M at cols + c·P, P = rows_pad(C) entries of which those at l >= C are 0, so that any
// label in [0, C] (C: a voxel in no class) reads an entry and 16 entries can be loaded at once.
inline int64_t rows_pad(int64_t C) { return C < 16 ? 16 : C + 1; }

// out[j] = col[y_j] (0 for a voxel in no class), j < n_pad: a table lookup per voxel.
template <typename T>
SC_INLINE void lookup_generic(const T* col, const Lab<T>* lab, int64_t C, int64_t n_pad, T* out) {
  const Lab<T> none = static_cast<Lab<T>>(C);
  FL_SC_IVDEP
  for (int64_t j = 0; j < n_pad; ++j) out[j] = col[lab[j] >= 0 ? lab[j] : none];
}

#if defined(FASTLOSS_X86_CLONES) && defined(__GNUC__) && !defined(__clang__)
#define FL_SC_AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")))
// Up to 16 classes the lookup is a lane permutation of the table's first 16 entries held in registers (one
// vpermps per 16 float voxels, one vpermt2pd per 8 double voxels); labels < 0 are zeroed by the mask. GCC does not
// vectorise lookup_generic (its gathers are off for this tuning), which costs the rows op most of its time. Called,
// not inlined (a target mismatch for the templates): one call per class and tile.
FL_SC_AVX512_ATTR void lookup_avx512(const float* col, const int32_t* lab, int64_t C, int64_t n_pad,
                                               float* out) {
  if (C > 16) return lookup_generic(col, lab, C, n_pad, out);
  const __m512 table = _mm512_loadu_ps(col);
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t j = 0; j < n_pad; j += 16) {
    const __m512i idx = _mm512_loadu_si512(static_cast<const void*>(lab + j));
    _mm512_storeu_ps(out + j, _mm512_maskz_permutexvar_ps(_mm512_cmpge_epi32_mask(idx, zero), idx, table));
  }
}
FL_SC_AVX512_ATTR void lookup_avx512(const double* col, const int64_t* lab, int64_t C, int64_t n_pad,
                                               double* out) {
  if (C > 16) return lookup_generic(col, lab, C, n_pad, out);
  const __m512d lo = _mm512_loadu_pd(col), hi = _mm512_loadu_pd(col + 8);
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t j = 0; j < n_pad; j += 8) {
    const __m512i idx = _mm512_loadu_si512(static_cast<const void*>(lab + j));
    _mm512_storeu_pd(out + j, _mm512_maskz_permutex2var_pd(_mm512_cmpge_epi64_mask(idx, zero), lo, idx, hi));
  }
}
#endif

template <typename T, bool kAvx512>
SC_INLINE void lookup(const T* col, const Lab<T>* lab, int64_t C, int64_t n_pad, T* out) {
#if defined(FL_SC_AVX512_ATTR)
  if constexpr (kAvx512) return lookup_avx512(col, lab, C, n_pad, out);
#endif
  lookup_generic(col, lab, C, n_pad, out);
}

// Rows op: one tile's 2·C partial sums into st (doubles, overwritten), W_tile[l] = Σ_{y_j = l} w_j then the counts
// n_tile[l], with w_j = Σ_c M[y_j, c]·p_c(j) = (Σ_c M[y_j, c]·e_c(j)) / Σ_c e_c(j), e_c = exp(x_c − max); and, when qb
// is not null, the derivative q_c(j) = p_c(j)·(M[y_j, c] − w_j) into qb's rows c·N + v0 (the backward's dx is
// A[y_j]·q_c(j)). One division per voxel; the exponentials kept in s.p between the two class loops.
template <typename T, bool kAvx512>
SC_INLINE void rows_tile(const T* xb, const int64_t* labb, const T* cols, int64_t C, int64_t N, int64_t v0, int64_t n,
                         double* st, T* qb, Scratch<T>& s) {
  const int64_t n_pad = (n + kPad - 1) / kPad * kPad, P = rows_pad(C);
  tile_labels(labb + v0, C, n, n_pad, s.lab.data());
  const Lab<T>* lab = s.lab.data();
  T* mx = s.mx.data();
  T* sum = s.sum.data();
  T* w = s.dot.data();
  T* m = s.g.data();
  for (int64_t j = 0; j < n; ++j) mx[j] = xb[v0 + j];
  for (int64_t c = 1; c < C; ++c) {
    const T* xc = xb + c * N + v0;
    for (int64_t j = 0; j < n; ++j) mx[j] = xc[j] > mx[j] ? xc[j] : mx[j];
  }
  for (int64_t j = 0; j < n; ++j) sum[j] = w[j] = T(0);
  for (int64_t c = 0; c < C; ++c) {  // Σ_c e_c and Σ_c M[y, c]·e_c, over c in order
    const T* xc = xb + c * N + v0;
    T* ec = s.p.data() + c * kRowStride;
    lookup<T, kAvx512>(cols + c * P, lab, C, n_pad, m);  // m_j = M[y_j, c]
    FL_SC_IVDEP  // distinct scratch arrays (too many pointers for GCC's run-time alias checks)
    for (int64_t j = 0; j < n; ++j) {
      const T e = exp_nonpos(xc[j] - mx[j]);  // x − max <= 0 (NaN stays NaN)
      ec[j] = e;
      sum[j] += e;
      w[j] += m[j] * e;
    }
  }
  FL_SC_IVDEP
  for (int64_t j = 0; j < n; ++j) {  // sum becomes 1 / Σ_c e_c, w the distance
    const T inv = T(1) / sum[j];
    sum[j] = inv;
    w[j] = w[j] * inv;
  }
  for (int64_t k = 0; k < 2 * C; ++k) st[k] = 0.0;
  for (int64_t j = 0; j < n; ++j) {  // voxel order
    const int64_t l = lab[j];
    if (l < 0) continue;
    st[l] += static_cast<double>(w[j]);
    st[C + l] += 1.0;
  }
  if (qb == nullptr) return;
  for (int64_t c = 0; c < C; ++c) {  // dL/dp_c = A[y]·M[y, c]; softmax Jacobian: dx_c = A[y]·p_c·(M[y, c] − w)
    const T* ec = s.p.data() + c * kRowStride;
    lookup<T, kAvx512>(cols + c * P, lab, C, n_pad, m);
    T* q = qb + c * N + v0;
    FL_SC_IVDEP
    for (int64_t j = 0; j < n; ++j) q[j] = ec[j] * sum[j] * (m[j] - w[j]);
  }
}

// Rows op backward, one tile: q_c(j) *= A[y_j] in place (A: the batch item's rows_pad(C) weights dL/dW in x's type,
// 0 from C on: a voxel in no class, whose q is 0 anyway).
template <typename T, bool kAvx512>
SC_INLINE void rows_scale_tile(const int64_t* labb, const T* at, int64_t C, int64_t N, int64_t v0, int64_t n, T* qb,
                               Scratch<T>& s) {
  const int64_t n_pad = (n + kPad - 1) / kPad * kPad;
  tile_labels(labb + v0, C, n, n_pad, s.lab.data());
  T* a = s.g.data();
  lookup<T, kAvx512>(at, s.lab.data(), C, n_pad, a);
  for (int64_t c = 0; c < C; ++c) {
    T* q = qb + c * N + v0;
    FL_SC_IVDEP
    for (int64_t j = 0; j < n; ++j) q[j] = q[j] * a[j];
  }
}

// The tile loops, one copy per instruction set (the always-inline bodies above are compiled into each).
struct Args {
  const void* x;
  const int64_t* labels;
  const void* G;  // backward: C·C values of x's type per batch item
  void* out;      // forward: double partials (tiles × C·C; rows op: tiles × 2·C); backward: dx
  int64_t C, N, tiles;
  const void* M;  // rows op: the column table of M in x's type (rows_pad)
  void* q;        // rows op: the derivative (B, C, N) of x's type, or null
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
  }                                                                                                                 \
  template <typename T>                                                                                            \
  ATTR void rows_items_##SUFFIX(const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {                         \
    for (int64_t t = begin; t < end; ++t) {                                                                         \
      const int64_t b = t / a.tiles, v0 = (t % a.tiles) * kTile, n = std::min(kTile, a.N - v0);                     \
      T* q = a.q == nullptr ? nullptr : static_cast<T*>(a.q) + b * a.C * a.N;                                       \
      rows_tile<T, VBYTES == 64>(static_cast<const T*>(a.x) + b * a.C * a.N, a.labels + b * a.N,                    \
                                 static_cast<const T*>(a.M), a.C, a.N, v0, n, static_cast<double*>(a.out) + t * 2 * a.C, \
                                 q, s);                                                                             \
    }                                                                                                               \
  }                                                                                                                 \
  template <typename T>                                                                                            \
  ATTR void rows_scale_items_##SUFFIX(const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {                   \
    for (int64_t t = begin; t < end; ++t) {                                                                         \
      const int64_t b = t / a.tiles, v0 = (t % a.tiles) * kTile, n = std::min(kTile, a.N - v0);                     \
      rows_scale_tile<T, VBYTES == 64>(a.labels + b * a.N, static_cast<const T*>(a.G) + b * rows_pad(a.C), a.C, a.N, \
                                       v0, n, static_cast<T*>(a.q) + b * a.C * a.N, s);                             \
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

// One dispatcher per tile loop: the instruction set's copy (the baseline's without the clones).
#if defined(FL_SC_CLONES)
#define FL_SC_DISPATCHER(NAME)                                                          \
  template <typename T>                                                                 \
  void NAME(Isa which, const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {      \
    if (which == Isa::kAvx512) return NAME##_avx512<T>(a, begin, end, s);               \
    if (which == Isa::kAvx2) return NAME##_avx2<T>(a, begin, end, s);                   \
    NAME##_base<T>(a, begin, end, s);                                                   \
  }
#else
#define FL_SC_DISPATCHER(NAME)                                                          \
  template <typename T>                                                                 \
  void NAME(Isa, const Args& a, int64_t begin, int64_t end, Scratch<T>& s) {            \
    NAME##_base<T>(a, begin, end, s);                                                   \
  }
#endif
FL_SC_DISPATCHER(forward_items)
FL_SC_DISPATCHER(backward_items)
FL_SC_DISPATCHER(rows_items)
FL_SC_DISPATCHER(rows_scale_items)

template <typename T>
void forward(const T* x, const int64_t* labels, int64_t B, int64_t C, int64_t N, double* S, int threads) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> part(static_cast<size_t>(B * tiles * C * C));
  const Args a{x, labels, nullptr, part.data(), C, N, tiles, nullptr, nullptr};
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
  const Args a{x, labels, g.data(), dx, C, N, tiles, nullptr, nullptr};
  const Isa which = isa();
  parallel_for(B * tiles, resolve_threads(threads), [&](int64_t begin, int64_t end) {
    Scratch<T> s(C, true);
    backward_items<T>(which, a, begin, end, s);
  });
}

// M (C × C doubles, row-major) as the rows op's column table in x's type: column c at c·P, zeros from row C on.
template <typename T>
std::vector<T> rows_table(const double* M, int64_t C) {
  const int64_t P = rows_pad(C);
  std::vector<T> t(static_cast<size_t>(C * P), T(0));
  for (int64_t l = 0; l < C; ++l)
    for (int64_t c = 0; c < C; ++c) t[static_cast<size_t>(c * P + l)] = static_cast<T>(M[l * C + c]);
  return t;
}

template <typename T>
void rows(const T* x, const int64_t* labels, const double* M, int64_t B, int64_t C, int64_t N, double* out, T* q,
          int threads) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> part(static_cast<size_t>(B * tiles * 2 * C));
  const std::vector<T> mt = rows_table<T>(M, C);
  const Args a{x, labels, nullptr, part.data(), C, N, tiles, mt.data(), q};
  const Isa which = isa();
  parallel_for(B * tiles, resolve_threads(threads), [&](int64_t begin, int64_t end) {
    Scratch<T> s(C, false);
    rows_items<T>(which, a, begin, end, s);
  });
  for (int64_t b = 0; b < B; ++b) {  // tiles in order
    double* ob = out + b * 2 * C;
    for (int64_t k = 0; k < 2 * C; ++k) ob[k] = 0.0;
    for (int64_t t = 0; t < tiles; ++t) {
      const double* st = part.data() + (b * tiles + t) * 2 * C;
      for (int64_t k = 0; k < 2 * C; ++k) ob[k] += st[k];
    }
  }
}

template <typename T>
void rows_scale(const int64_t* labels, const double* A, int64_t B, int64_t C, int64_t N, T* q, int threads) {
  const int64_t tiles = (N + kTile - 1) / kTile, P = rows_pad(C);
  std::vector<T> at(static_cast<size_t>(B * P), T(0));  // per batch item dL/dW, zeros from C on (no class)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < C; ++l) at[static_cast<size_t>(b * P + l)] = static_cast<T>(A[b * C + l]);
  const Args a{nullptr, labels, at.data(), nullptr, C, N, tiles, nullptr, q};
  const Isa which = isa();
  parallel_for(B * tiles, resolve_threads(threads), [&](int64_t begin, int64_t end) {
    Scratch<T> s(C, false);
    rows_scale_items<T>(which, a, begin, end, s);
  });
}

void check(int64_t B, int64_t C, int64_t N, int elem) {
  if (B < 1 || C < 1 || N < 1) throw std::invalid_argument("soft confusion: expected positive sizes");
  if (C > (int64_t(1) << 30)) throw std::invalid_argument("soft confusion: too many classes");
  if (elem != 4 && elem != 8) throw std::invalid_argument("soft confusion: elem must be 4 or 8, got " + std::to_string(elem));
}

// The rows op's tables are C·rows_pad(C) entries: a bound far above any class-distance matrix's size.
constexpr int64_t kRowsMaxC = 32768;

}  // namespace

void soft_confusion_rows_cpu(const void* x, const int64_t* labels, const double* M, int64_t B, int64_t C, int64_t N,
                             int elem, double* out, void* q, int threads) {
  check(B, C, N, elem);
  if (C > kRowsMaxC) throw std::invalid_argument("soft confusion rows: at most 32768 classes");
  if (elem == 4) rows(static_cast<const float*>(x), labels, M, B, C, N, out, static_cast<float*>(q), threads);
  else rows(static_cast<const double*>(x), labels, M, B, C, N, out, static_cast<double*>(q), threads);
}

void soft_confusion_rows_scale_cpu(const int64_t* labels, const double* A, int64_t B, int64_t C, int64_t N, int elem,
                                   void* q, int threads) {
  check(B, C, N, elem);
  if (C > kRowsMaxC) throw std::invalid_argument("soft confusion rows: at most 32768 classes");
  if (elem == 4) rows_scale(labels, A, B, C, N, static_cast<float*>(q), threads);
  else rows_scale(labels, A, B, C, N, static_cast<double*>(q), threads);
}

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
