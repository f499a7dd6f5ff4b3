// NACL's neighbourhood penalty on the CPU; semantics in nacl_cpu.h and fastloss/ops/neighbourhood.py.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

#include "nacl_cpu.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "parallel.h"

namespace fastloss {
namespace {

// out[i] = Σ_t w[t]·in[i + (t − left)·st] along one axis of length n (zero outside), for every line of that axis.
// Lines: `outer` blocks of `n` positions, each position a run of `inner` contiguous values.
void filter_axis(const float* in, float* out, int64_t outer, int64_t n, int64_t inner, const std::vector<float>& w,
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
