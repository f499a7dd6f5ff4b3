// The soft confusion matrix on the CPU; semantics in soft_confusion_cpu.h and fastloss/ops/soft_confusion.py.
// The softmax of a voxel is computed in x's type as torch does (max, exp(x − max), sum, divide; the exp is the C
// library's, so values agree with torch's to a few ulps), the sums in double.
#include "soft_confusion_cpu.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"

namespace fastloss {
namespace {

constexpr int64_t kTile = 2048;

// p[c·kTile + j] = softmax over c of x[b, c, v0 + j], j < n.
template <typename T>
void tile_softmax(const T* xb, int64_t C, int64_t N, int64_t v0, int64_t n, T* p, T* mx, T* sum) {
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
      pc[j] = std::exp(xc[j] - mx[j]);
      sum[j] += pc[j];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    T* pc = p + c * kTile;
    for (int64_t j = 0; j < n; ++j) pc[j] = pc[j] / sum[j];
  }
}

template <typename T>
void forward(const T* x, const int64_t* labels, int64_t B, int64_t C, int64_t N, double* S, int threads) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> part(static_cast<size_t>(B * tiles * C * C), 0.0);
  parallel_for(B * tiles, threads, [&](int64_t begin, int64_t end) {
    std::vector<T> p(static_cast<size_t>(C * kTile)), mx(kTile), sum(kTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles, v0 = (t % tiles) * kTile, n = std::min(kTile, N - v0);
      tile_softmax(x + b * C * N, C, N, v0, n, p.data(), mx.data(), sum.data());
      double* st = part.data() + t * C * C;
      const int64_t* lab = labels + b * N + v0;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t l = lab[j];
        if (l < 0 || l >= C) continue;
        double* row = st + l * C;
        for (int64_t c = 0; c < C; ++c) row[c] += static_cast<double>(p[static_cast<size_t>(c * kTile + j)]);
      }
    }
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
void backward(const T* x, const int64_t* labels, const double* G, int64_t B, int64_t C, int64_t N, T* dx,
              int threads) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  parallel_for(B * tiles, threads, [&](int64_t begin, int64_t end) {
    std::vector<T> p(static_cast<size_t>(C * kTile)), mx(kTile), sum(kTile), dot(kTile);
    std::vector<T> g(static_cast<size_t>(C * C));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles, v0 = (t % tiles) * kTile, n = std::min(kTile, N - v0);
      for (int64_t k = 0; k < C * C; ++k) g[static_cast<size_t>(k)] = static_cast<T>(G[b * C * C + k]);
      tile_softmax(x + b * C * N, C, N, v0, n, p.data(), mx.data(), sum.data());
      const int64_t* lab = labels + b * N + v0;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t l = lab[j];
        T d = T(0);
        if (l >= 0 && l < C) {
          const T* row = g.data() + l * C;
          for (int64_t c = 0; c < C; ++c) d += p[static_cast<size_t>(c * kTile + j)] * row[c];
        }
        dot[j] = d;
      }
      for (int64_t c = 0; c < C; ++c) {
        T* out = dx + b * C * N + c * N + v0;
        const T* pc = p.data() + c * kTile;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t l = lab[j];
          const T gl = (l >= 0 && l < C) ? g[static_cast<size_t>(l * C + c)] : T(0);
          out[j] = pc[j] * (gl - dot[j]);
        }
      }
    }
  });
}

void check(int64_t B, int64_t C, int64_t N, int elem) {
  if (B < 1 || C < 1 || N < 1) throw std::invalid_argument("soft confusion: expected positive sizes");
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
