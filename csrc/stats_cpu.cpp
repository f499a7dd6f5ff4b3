// Dispatch of the CPU statistics kernels (stats_cpu.h): the instruction set, the threads, and the
// fixed-order reduction of the per-tile partial sums; and the radix TopK select.
#include "stats_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_math.h"
#include "parallel.h"

namespace fastloss {
namespace {

enum class Isa { kBase, kAvx2, kAvx512 };

Isa best_isa() {
#if defined(FASTLOSS_X86_CLONES)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBase;
}

// The best the CPU supports, lowered by FASTLOSS_CPU_ISA=base|avx2|avx512 (read at every call, so
// tests can compare instruction sets; a request above what the CPU has gets the best it has).
Isa active_isa() {
  static const Isa best = best_isa();
  const char* env = std::getenv("FASTLOSS_CPU_ISA");
  if (!env || !*env) return best;
  Isa want = best;
  if (std::strcmp(env, "base") == 0) want = Isa::kBase;
  else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
  else if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
  else throw std::invalid_argument(std::string("FASTLOSS_CPU_ISA must be base, avx2 or avx512, got ") + env);
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

StatsKernels kernels() {
#if defined(FASTLOSS_X86_CLONES)
  switch (active_isa()) {
    case Isa::kAvx512: return stats_kernels_avx512();
    case Isa::kAvx2: return stats_kernels_avx2();
    default: break;
  }
#else
  (void)active_isa();
#endif
  return stats_kernels_base();
}

size_t elem_size(const StatsArgs& a) { return a.x.dtype == kF64 ? sizeof(double) : sizeof(float); }

int64_t num_items(const StatsArgs& a) { return a.B * ((a.N + kTile - 1) / kTile); }

// Runs body(begin, end, scratch) over the (b, tile) items; scratch is per worker thread, aligned by the kernels.
template <class Body>
void for_items(const StatsArgs& a, int threads, Body body) {
  const size_t bytes = stats_scratch_bytes(a.C, elem_size(a));
  parallel_for(num_items(a), resolve_threads(threads), [&](int64_t begin, int64_t end) {
    // one buffer per worker thread, kept between calls: no allocation and no zeroing per chunk (its
    // contents are written before they are read)
    thread_local std::vector<unsigned char> scratch;
    if (scratch.size() < bytes) scratch.resize(bytes);
    body(begin, end, static_cast<void*>(scratch.data()));
  });
}

}  // namespace

const char* stats_cpu_isa() {
  switch (active_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

void class_stats_cpu_forward(const StatsArgs& a, void* out, int threads) {
  const StatsKernels k = kernels();
  const int64_t tiles = (a.N + kTile - 1) / kTile;
  const int64_t CK = a.C * a.K;
  std::vector<double> part(static_cast<size_t>(num_items(a) * CK));
  for_items(a, threads, [&](int64_t begin, int64_t end, void* scratch) {
    k.forward(a, begin, end, part.data() + begin * CK, scratch);
  });
  // per (b, c, k): the tiles' partial sums added in tile order, whatever the threads did (the tiles walked
  // in memory order, every (c, k) sum advanced per tile: the same additions as one (c, k) at a time, without
  // a strided pass over all the partials for each)
  std::vector<double> sums(static_cast<size_t>(CK));
  for (int64_t b = 0; b < a.B; ++b) {
    std::fill(sums.begin(), sums.end(), 0.0);
    for (int64_t t = 0; t < tiles; ++t) {
      const double* pt = part.data() + (b * tiles + t) * CK;
      for (int64_t j = 0; j < CK; ++j) sums[static_cast<size_t>(j)] += pt[j];
    }
    for (int64_t j = 0; j < CK; ++j) {
      if (a.x.dtype == kF64)
        static_cast<double*>(out)[b * CK + j] = sums[static_cast<size_t>(j)];
      else
        static_cast<float*>(out)[b * CK + j] = static_cast<float>(sums[static_cast<size_t>(j)]);
    }
  }
}

void class_stats_cpu_backward(const StatsArgs& a, const void* grad, View dx, int threads) {
  const StatsKernels k = kernels();
  for_items(a, threads, [&](int64_t begin, int64_t end, void* scratch) { k.backward(a, grad, dx, begin, end, scratch); });
}

void voxel_ce_cpu_forward(const StatsArgs& a, void* ce, int threads) {
  const StatsKernels k = kernels();
  for_items(a, threads, [&](int64_t begin, int64_t end, void* scratch) { k.voxel_ce_forward(a, ce, begin, end, scratch); });
}

void voxel_ce_cpu_backward(const StatsArgs& a, const void* gce, View dx, int threads) {
  const StatsKernels k = kernels();
  for_items(a, threads,
            [&](int64_t begin, int64_t end, void* scratch) { k.voxel_ce_backward(a, gce, dx, begin, end, scratch); });
}

// ------------------------------------------------------------------------------------------- TopK
namespace {

// Order-preserving unsigned key of a float: non-negative floats get the sign bit set, negative ones all
// bits flipped; −0.0 is first made +0.0 (equal floats, equal keys); every NaN, whatever its sign bit
// (x86 makes −NaN from inf − inf), gets the largest key: above +inf, as torch.topk orders NaN.
inline uint32_t topk_key(float v) {
  const float z = v + 0.0f;
  uint32_t u;
  std::memcpy(&u, &z, 4);
  const uint32_t key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return v != v ? 0xffffffffu : key;
}

inline float key_value(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

}  // namespace

void topk_weights_cpu(const float* v, int64_t m, float thr, float share, float grad, float* w, int threads) {
  const int64_t chunk = 1 << 16;
  parallel_for((m + chunk - 1) / chunk, resolve_threads(threads), [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * chunk, hi = std::min(m, end * chunk);
    for (int64_t i = lo; i < hi; ++i) {
      const float x = v[i];
      w[i] = grad * (x > thr ? 1.0f : (x == thr ? share : 0.0f));
    }
  });
}

// One histogram pass over the top 11 bits of the keys finds the bucket d holding the k-th largest value;
// a second pass gathers the keys of that bucket (when they are a small share of the values) and sums the
// values above it, and two more digits (11 and 10 bits) of histogram over the gathered keys give the exact
// key, #{key > it} and #{key == it} (a large bucket: the digits and the sum by passes over the values).
// Histograms are integers (merged in any order, same result); the sums add fixed tiles' double partials in
// tile order: deterministic for any thread count.
TopkResult topk_select_cpu(const float* v, int64_t m, int64_t k, int threads) {
  if (m < 1 || k < 1 || k > m) throw std::invalid_argument("topk_select_cpu: expected 1 <= k <= m");
  const int nthreads = resolve_threads(threads);
  constexpr int kShift = 21, kBins = 1 << 11;
  // one contiguous range per thread (counts are integers: merged in any order, the same result), and at
  // most 2^30 values per range, so that its int32 counters cannot overflow
  const int64_t parts = std::max<int64_t>({int64_t(1), std::min<int64_t>(nthreads, m / 4096), (m + (int64_t(1) << 30) - 1) >> 30});
  auto range = [&](int64_t p) { return std::make_pair(m * p / parts, m * (p + 1) / parts); };
  std::vector<int32_t> local(static_cast<size_t>(parts) * 4 * kBins, 0);
  parallel_for(parts, nthreads, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      // four interleaved histograms: runs of equal keys do not wait on one counter's store
      int32_t* h = local.data() + p * 4 * kBins;
      const auto [begin, end] = range(p);
      int64_t i = begin;
      for (; i + 4 <= end; i += 4)
        for (int j = 0; j < 4; ++j) ++h[j * kBins + (topk_key(v[i + j]) >> kShift)];
      for (; i < end; ++i) ++h[topk_key(v[i]) >> kShift];
    }
  });
  std::vector<int64_t> hist(kBins, 0);
  for (int64_t p = 0; p < parts * 4; ++p)
    for (int b = 0; b < kBins; ++b) hist[static_cast<size_t>(b)] += local[static_cast<size_t>(p * kBins + b)];
  // the bucket d holding the k-th largest: above(d) < k <= above(d) + hist[d]
  int64_t above = 0;
  int d = kBins - 1;
  for (; d > 0; --d) {
    if (above + hist[static_cast<size_t>(d)] >= k) break;
    above += hist[static_cast<size_t>(d)];
  }
  // The remaining 21 bits: two more digits (11 and 10 bits) of histogram over bucket d's keys, then the sum
  // of the values above the threshold. Bucket d holds a small share of the values in the common case:
  // its keys are gathered in one pass (which also sums the values above bucket d), and the digits read
  // the gathered keys only. When it holds many (a flat top bucket, many equal values, everything equal),
  // gathering them would keep up to 4 bytes per value, as much memory as the input itself (~8 GiB for
  // 2^31 values): those inputs take three more passes over the values instead, with nothing kept.
  const int64_t bucket_count = hist[static_cast<size_t>(d)];
  const bool gather = bucket_count <= std::max<int64_t>(int64_t(1) << 20, m / 16);
  const int64_t tile = 1 << 14;
  const int64_t tiles = (m + tile - 1) / tile;
  int64_t krem = k - above;  // 1 <= krem <= bucket_count
  int64_t greater = above, equal = 0;
  uint32_t prefix = static_cast<uint32_t>(d);
  const int shifts[2] = {10, 0};
  const int widths[2] = {11, 10};
  // one digit: the bucket dd of the krem-th largest key among keys with the prefix, from the histogram h
  auto descend = [&](const std::vector<int64_t>& h, int pass) {
    const int nb = 1 << widths[pass];
    int64_t ab = 0;
    int dd = nb - 1;
    for (; dd > 0; --dd) {
      if (ab + h[static_cast<size_t>(dd)] >= krem) break;
      ab += h[static_cast<size_t>(dd)];
    }
    greater += ab;
    krem -= ab;
    equal = h[static_cast<size_t>(dd)];
    prefix = (prefix << widths[pass]) | static_cast<uint32_t>(dd);
  };
  double sum = 0.0;
  if (gather) {
    // One pass in fixed tiles: the keys of bucket d gathered (without a branch: a key is written at the
    // end, which advances only on a match; one spare slot per tile bounds every write) into a per-thread
    // tile buffer and kept in a vector of their own size, and the sum of the values above bucket d, which
    // are in the top k whatever the threshold inside d turns out to be (8 double lanes per tile, tiles
    // added in tile order: the same bits for any thread count).
    std::vector<std::vector<uint32_t>> gathered(static_cast<size_t>(tiles));
    std::vector<double> part(static_cast<size_t>(tiles), 0.0);
    parallel_for(tiles, nthreads, [&](int64_t t0, int64_t t1) {
      std::vector<uint32_t> buf(static_cast<size_t>(tile) + 1);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t lo = t * tile, hi = std::min(m, (t + 1) * tile);
        size_t n = 0;
        uint32_t* o = buf.data();
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = lo; i < hi; ++i) {
          const uint32_t key = topk_key(v[i]);
          const uint32_t bucket = key >> kShift;
          o[n] = key;
          n += static_cast<size_t>(bucket == static_cast<uint32_t>(d));
          s[(i - lo) & 7] += bucket > static_cast<uint32_t>(d) ? static_cast<double>(v[i]) : 0.0;
        }
        gathered[static_cast<size_t>(t)].assign(o, o + n);
        part[static_cast<size_t>(t)] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
      }
    });
    for (int pass = 0; pass < 2; ++pass) {
      const int shift = shifts[pass], nb = 1 << widths[pass];
      std::vector<int64_t> h(static_cast<size_t>(nb), 0);
      for (const auto& g : gathered)
        for (uint32_t key : g)
          if ((key >> (shift + widths[pass])) == prefix) ++h[(key >> shift) & static_cast<uint32_t>(nb - 1)];
      descend(h, pass);
    }
    const uint32_t thr_key = prefix;
    for (double s : part) sum += s;
    for (const auto& g : gathered)  // bucket d's values above the threshold, in tile order (the key is the value)
      for (uint32_t key : g)
        if (key > thr_key) sum += static_cast<double>(key_value(key));
  } else {
    // the two digits by histograms over all values (keys outside the prefix skipped), per part as above
    for (int pass = 0; pass < 2; ++pass) {
      const int shift = shifts[pass], nb = 1 << widths[pass];
      const uint32_t want = prefix;
      std::vector<int64_t> lh(static_cast<size_t>(parts) * static_cast<size_t>(nb), 0);
      parallel_for(parts, nthreads, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          int64_t* h = lh.data() + p * nb;
          const auto [begin, end] = range(p);
          for (int64_t i = begin; i < end; ++i) {
            const uint32_t key = topk_key(v[i]);
            if ((key >> (shift + widths[pass])) == want) ++h[(key >> shift) & static_cast<uint32_t>(nb - 1)];
          }
        }
      });
      std::vector<int64_t> h(static_cast<size_t>(nb), 0);
      for (int64_t p = 0; p < parts; ++p)
        for (int b = 0; b < nb; ++b) h[static_cast<size_t>(b)] += lh[static_cast<size_t>(p * nb + b)];
      descend(h, pass);
    }
    // the values above the threshold, fixed tiles of 8 double lanes added in tile order
    const uint32_t thr_key = prefix;
    std::vector<double> part(static_cast<size_t>(tiles), 0.0);
    parallel_for(tiles, nthreads, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t lo = t * tile, hi = std::min(m, (t + 1) * tile);
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = lo; i < hi; ++i)
          s[(i - lo) & 7] += topk_key(v[i]) > thr_key ? static_cast<double>(v[i]) : 0.0;
        part[static_cast<size_t>(t)] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
      }
    });
    for (double s : part) sum += s;
  }
  const uint32_t thr_key = prefix;
  const float thr = key_value(thr_key);
  sum += static_cast<double>(k - greater) * static_cast<double>(thr);
  return TopkResult{sum, thr, greater, equal};
}

void convert_halves_cpu(const void* src, void* dst, int64_t n, int kind) {
  using namespace cpu_math;
  const uint16_t* s16 = static_cast<const uint16_t*>(src);
  const float* s32 = static_cast<const float*>(src);
  uint16_t* d16 = static_cast<uint16_t*>(dst);
  float* d32 = static_cast<float*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    switch (kind) {
      case 0: d32[i] = half_to_float(s16[i]); break;
      case 1: d16[i] = float_to_half(s32[i]); break;
      case 2: d32[i] = bf16_to_float(s16[i]); break;
      default: d16[i] = float_to_bf16(s32[i]); break;
    }
  }
}

}  // namespace fastloss
