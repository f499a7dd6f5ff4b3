// Exact EDT evaluated at query voxels only (CPU): for every non-zero voxel of `query`, in C order, its
// distance to the nearest zero of `mask` -- the values edt_cpu(mask)[query] -- without running the later
// passes of the transform over the whole volume. The surface metrics need distances at border voxels
// only (a few percent of a volume), and most of those lie within a few voxels of the other border.
//
// Volumes are handled as 3D (n0, n1, n2) with leading sizes 1 for 1D and 2D. Pass 1 of the EDT (along the
// contiguous axis, squared_line_distance below) gives f(z, y, x) = (s2 * distance along x to the
// nearest zero of line (z, y))^2. The nearest zero of voxel (z, y, x) lies on some line (z + dz, y + dy),
// and on that line the nearest one to x is the one f measures, so
//     d^2 = min over (dz, dy) of  w(dz, dy) + f(z + dz, y + dy, x),    w = s0^2 dz^2 + s1^2 dy^2.
// Visiting the offsets in increasing w and stopping at the first w >= best is exact (f >= 0, so no later
// offset can do better); a query at distance d stops after about pi d^2 / (s0 s1) offsets.
//
// The sorted table holds every offset with w < w_table, where w_table = min over the axes not fully
// covered of s^2 (kReach + 1)^2 (all such offsets have |dz|, |dy| <= kReach). A query whose search runs
// through the whole table without settling (best > w_table) scans the remaining offsets by brute force,
// still exactly. Every volume has a work budget of kBudgetPerVoxel lookups per voxel: a volume whose
// queries would cost more than that (queries far from every zero) is finished with the full transform
// (edt_cpu) instead. Whether that happens depends only on the input (the total work of the search), so the
// result is deterministic. Both paths are exact; with unit spacing they agree bit for bit (integers below
// 2^24), otherwise to the last bit of float32 (the full transform rounds each pass to float32).
//
// Options for the surface metrics: `features_nonzero` measures distances to the non-zeros of the mask (a
// border mask) instead of its zeros, so no inverted copy is made; with a finite `max_distance` (the NSD
// tolerance) larger distances come back as +inf, and when the ball of that radius holds at most kMaxBall
// voxel offsets there is no pass 1 at all: each query tests the ball's offsets in increasing length and
// the first feature voxel found gives its distance.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "edt.h"
#include "parallel.h"

namespace fastloss {
namespace {

constexpr int64_t kReach = 24;           // the sorted table covers offsets up to this many voxels per axis
constexpr int64_t kBudgetPerVoxel = 6;   // search lookups per voxel before the full transform is cheaper
constexpr int64_t kBudgetMinimum = 1 << 16;
constexpr int64_t kMaxBall = 343;        // a max_distance ball this small is searched voxel by voxel

struct Offset {
  double w;       // s0^2 dz^2 + s1^2 dy^2
  int64_t dz, dy;
  int64_t delta;  // (dz * n1 + dy) * n2: the offset in elements
};

// Every offset (dz, dy) with w < *w_table inside the volume's extent, sorted by w (ties in a fixed order).
std::vector<Offset> sorted_offsets(int64_t n0, int64_t n1, int64_t n2, double s0, double s1, double* w_table) {
  const int64_t r0 = std::min(n0 - 1, kReach), r1 = std::min(n1 - 1, kReach);
  double lim = std::numeric_limits<double>::infinity();
  if (r0 < n0 - 1) lim = std::min(lim, s0 * s0 * double((r0 + 1) * (r0 + 1)));
  if (r1 < n1 - 1) lim = std::min(lim, s1 * s1 * double((r1 + 1) * (r1 + 1)));
  std::vector<Offset> table;
  table.reserve(static_cast<size_t>((2 * r0 + 1) * (2 * r1 + 1)));
  for (int64_t dz = -r0; dz <= r0; ++dz) {
    for (int64_t dy = -r1; dy <= r1; ++dy) {
      const double w = s0 * s0 * double(dz * dz) + s1 * s1 * double(dy * dy);
      if (w < lim) table.push_back({w, dz, dy, (dz * n1 + dy) * n2});
    }
  }
  std::sort(table.begin(), table.end(), [](const Offset& a, const Offset& b) {
    if (a.w != b.w) return a.w < b.w;
    if (a.dz != b.dz) return a.dz < b.dz;
    return a.dy < b.dy;
  });
  *w_table = lim;
  return table;
}

// f[i] = (s * dist(i))^2 as float32 for i in [lo, hi), rounded once from the exact value (as
// edt1d::binary_line stores it). With s == 1 and dist < 46341 the square is an exact int32, converted
// once: the same float, in a loop that vectorises.
template <class Dist>
void store_run(float* __restrict__ f, int32_t lo, int32_t hi, double s, bool unit, Dist dist) {
  if (unit) {
    for (int32_t i = lo; i < hi; ++i) {
      const int32_t d = dist(i);
      f[i] = static_cast<float>(d * d);
    }
  } else {
    for (int32_t i = lo; i < hi; ++i) {
      const double ds = static_cast<double>(dist(i)) * s;
      f[i] = static_cast<float>(ds * ds);
    }
  }
}

// Pass 1 of the EDT on one line of the mask, as edt1d::binary_line stores it (the same float32 values,
// computed from integer distances): f[i] = (s * distance to the nearest zero of m on the line)^2, +inf on
// a line without zeros. Finds the zeros first (branch-free), then fills the runs between them with
// min(i - previous zero, next zero - i), loops without branches. `zeros` holds n positions. Returns
// whether the line has a zero.
bool squared_line_distance(const uint8_t* m, float* f, int64_t n, double s, bool features_nonzero, int32_t* zeros) {
  const int feature_flag = features_nonzero ? 1 : 0;
  int32_t count = 0;
  for (int32_t i = 0; i < static_cast<int32_t>(n); ++i) {
    zeros[count] = i;
    count += ((m[i] != 0) == feature_flag);
  }
  if (count == 0) {
    std::fill(f, f + n, std::numeric_limits<float>::infinity());
    return false;
  }
  const bool unit = s == 1.0 && n < 46341;
  const int32_t z0 = zeros[0], zl = zeros[count - 1];
  store_run(f, 0, z0, s, unit, [z0](int32_t i) { return z0 - i; });
  for (int32_t k = 0; k + 1 < count; ++k) {
    const int32_t a = zeros[k], b = zeros[k + 1];
    store_run(f, a, b, s, unit, [a, b](int32_t i) { return std::min(i - a, b - i); });
  }
  store_run(f, zl, static_cast<int32_t>(n), s, unit, [zl](int32_t i) { return i - zl; });
  return true;
}

// Offsets (dz, dy, dx) of length^2 w = s0^2 dz^2 + s1^2 dy^2 + s2^2 dx^2 <= reach2 (within the volume's
// extent), sorted by w, or an empty vector when there are more than kMaxBall of them.
struct BallOffset {
  double w;
  int64_t dz, dy, dx;
  int64_t delta;  // (dz * n1 + dy) * n2 + dx
};

std::vector<BallOffset> ball_offsets(const int64_t n[3], const double s[3], double reach2) {
  int64_t r[3];
  double cells = 1.0;
  for (int a = 0; a < 3; ++a) {
    // clamped in double first: a huge max_distance or a tiny spacing must not overflow the cast
    r[a] = static_cast<int64_t>(std::min(double(n[a] - 1), std::floor(std::sqrt(reach2) / s[a])));
    cells *= double(2 * r[a] + 1);
  }
  std::vector<BallOffset> ball;
  if (cells > double(8 * kMaxBall)) return ball;
  for (int64_t dz = -r[0]; dz <= r[0]; ++dz)
    for (int64_t dy = -r[1]; dy <= r[1]; ++dy)
      for (int64_t dx = -r[2]; dx <= r[2]; ++dx) {
        const double w = s[0] * s[0] * double(dz * dz) + s[1] * s[1] * double(dy * dy) + s[2] * s[2] * double(dx * dx);
        if (w <= reach2) ball.push_back({w, dz, dy, dx, (dz * n[1] + dy) * n[2] + dx});
      }
  if (static_cast<int64_t>(ball.size()) > kMaxBall) return {};
  std::sort(ball.begin(), ball.end(), [](const BallOffset& a, const BallOffset& b) {
    if (a.w != b.w) return a.w < b.w;
    if (a.dz != b.dz) return a.dz < b.dz;
    if (a.dy != b.dy) return a.dy < b.dy;
    return a.dx < b.dx;
  });
  return ball;
}

// edt_query_cpu for spacings in the safe range (normalise_spacing in edt_cpu.cpp).
void edt_query_normalised(const uint8_t* mask, const uint8_t* query, float* out, int64_t capacity, int64_t batch,
                          const std::vector<int64_t>& shape, const std::vector<double>& spacing,
                          bool features_nonzero, double max_distance, int threads) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  if (nd < 1 || nd > 3) throw std::invalid_argument("edt_query_cpu: 1 to 3 spatial dims expected");
  if (static_cast<int64_t>(spacing.size()) != nd)
    throw std::invalid_argument("edt_query_cpu: one spacing per spatial dim");
  // as 3D: (n0, n1, n2), padded with leading 1s
  int64_t n[3] = {1, 1, 1};
  double s[3] = {1.0, 1.0, 1.0};
  for (int64_t a = 0; a < nd; ++a) {
    n[3 - nd + a] = shape[a];
    s[3 - nd + a] = spacing[a];
  }
  const int64_t n0 = n[0], n1 = n[1], n2 = n[2];
  if (n2 > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("edt_query_cpu: the last axis must be shorter than 2^31");
  const int64_t vol = n0 * n1 * n2;
  const int64_t lines_per_volume = n0 * n1;
  const int64_t lines = batch * lines_per_volume;
  if (batch <= 0 || vol <= 0) {
    if (capacity != 0) throw std::invalid_argument("edt_query_cpu: empty input but non-zero capacity");
    return;
  }
  threads = resolve_threads(threads);
  if (batch * vol < (int64_t(1) << 15)) threads = 1;  // thread start-up would cost more than the work

  // Distances above max_distance come back as +inf, so the search needs offsets up to it only (a hair
  // beyond, so that float32 rounding of the final distance decides): w > reach2 cannot give a distance
  // <= max_distance.
  const float max_d = static_cast<float>(max_distance);
  const double reach2 = std::isinf(max_distance) ? std::numeric_limits<double>::infinity()
                                                  : std::pow(max_distance * (1.0 + 1e-6), 2) + 1e-12;
  auto finish = [max_d](float d) { return d > max_d ? std::numeric_limits<float>::infinity() : d; };
  const int feature_flag = features_nonzero ? 1 : 0;

  // Queries per line, then their output positions (prefix sums).
  std::vector<int64_t> first(static_cast<size_t>(lines + 1), 0);
  auto count_queries = [&](int64_t line) {
    const uint8_t* q = query + line * n2;
    int64_t count = 0;
    for (int64_t i = 0; i < n2; ++i) count += (q[i] != 0);
    first[static_cast<size_t>(line + 1)] = count;
  };
  auto prefix_and_check = [&]() {
    for (int64_t line = 0; line < lines; ++line) first[static_cast<size_t>(line + 1)] += first[static_cast<size_t>(line)];
    if (first[static_cast<size_t>(lines)] != capacity)
      throw std::invalid_argument("edt_query_cpu: the query mask has " + std::to_string(first[static_cast<size_t>(lines)]) +
                                  " non-zero voxels but the output holds " + std::to_string(capacity));
  };

  // A small max_distance (NSD at a tolerance of a few voxels): no transform at all. Each query visits the
  // voxel offsets of the ball in increasing length and stops at the first feature voxel, whose offset
  // length is the exact distance (every shorter offset holds none); none in the ball: beyond max_distance.
  const std::vector<BallOffset> ball =
      std::isinf(max_distance) ? std::vector<BallOffset>() : ball_offsets(n, s, reach2);
  if (!ball.empty()) {
    parallel_for(lines, threads, [&](int64_t begin, int64_t end) {
      for (int64_t line = begin; line < end; ++line) count_queries(line);
    });
    prefix_and_check();
    parallel_for(lines, threads, [&](int64_t begin, int64_t end) {
      for (int64_t line = begin; line < end; ++line) {
        int64_t pos = first[static_cast<size_t>(line)];
        if (pos == first[static_cast<size_t>(line + 1)]) continue;
        const int64_t b = line / lines_per_volume, zy = line % lines_per_volume, z = zy / n1, y = zy % n1;
        const uint8_t* mv = mask + b * vol;
        const uint8_t* q = query + line * n2;
        for (int64_t x = 0; x < n2; ++x) {
          if (!q[x]) continue;
          const int64_t centre = zy * n2 + x;
          float d = std::numeric_limits<float>::infinity();
          for (const BallOffset& o : ball) {
            if (static_cast<uint64_t>(z + o.dz) >= static_cast<uint64_t>(n0) ||
                static_cast<uint64_t>(y + o.dy) >= static_cast<uint64_t>(n1) ||
                static_cast<uint64_t>(x + o.dx) >= static_cast<uint64_t>(n2))
              continue;
            if ((mv[centre + o.delta] != 0) == feature_flag) {
              d = finish(static_cast<float>(std::sqrt(o.w)));
              break;
            }
          }
          out[pos++] = d;
        }
      }
    });
    return;
  }

  // Pass 1 along the contiguous axis (every element written: no zero-fill of a buffer this size), and per
  // line its number of queries and whether it has a zero.
  std::unique_ptr<float[]> f(new float[static_cast<size_t>(batch * vol)]);
  std::vector<uint8_t> line_has_zero(static_cast<size_t>(lines), 0);
  parallel_for(lines, threads, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> zeros(static_cast<size_t>(n2));
    for (int64_t line = begin; line < end; ++line) {
      count_queries(line);
      line_has_zero[static_cast<size_t>(line)] = squared_line_distance(mask + line * n2, f.get() + line * n2,
                                                                        n2, s[2], features_nonzero, zeros.data());
    }
  });
  prefix_and_check();
  std::vector<uint8_t> volume_has_zero(static_cast<size_t>(batch), 0);
  for (int64_t line = 0; line < lines; ++line)
    volume_has_zero[static_cast<size_t>(line / lines_per_volume)] |= line_has_zero[static_cast<size_t>(line)];

  double w_table = 0.0;
  const std::vector<Offset> table = sorted_offsets(n0, n1, n2, s[0], s[1], &w_table);
  const int64_t K = static_cast<int64_t>(table.size());
  const double s0sq = s[0] * s[0], s1sq = s[1] * s[1];
  const int64_t budget = std::max<int64_t>(kBudgetMinimum, kBudgetPerVoxel * vol);
  std::vector<std::atomic<int64_t>> work(static_cast<size_t>(batch));
  for (auto& w : work) w.store(0, std::memory_order_relaxed);

  parallel_for(lines, threads, [&](int64_t begin, int64_t end) {
    for (int64_t line = begin; line < end; ++line) {
      int64_t pos = first[static_cast<size_t>(line)];
      const int64_t stop = first[static_cast<size_t>(line + 1)];
      if (pos == stop) continue;
      const int64_t b = line / lines_per_volume;
      if (!volume_has_zero[static_cast<size_t>(b)]) {  // no zero anywhere: every distance is +inf
        for (; pos < stop; ++pos) out[pos] = std::numeric_limits<float>::infinity();
        continue;
      }
      std::atomic<int64_t>& spent = work[static_cast<size_t>(b)];
      if (spent.load(std::memory_order_relaxed) > budget) continue;  // finished by the full transform
      const int64_t zy = line % lines_per_volume, z = zy / n1, y = zy % n1;
      const float* fv = f.get() + b * vol;
      const uint8_t* q = query + line * n2;
      int64_t lookups = 0;
      for (int64_t x = 0; x < n2; ++x) {
        if (!q[x]) continue;
        const int64_t centre = zy * n2 + x;
        double best = std::numeric_limits<double>::infinity();
        int64_t k = 0;
        for (; k < K; ++k) {
          const Offset& o = table[static_cast<size_t>(k)];
          if (o.w >= best || o.w > reach2) break;
          if (static_cast<uint64_t>(z + o.dz) >= static_cast<uint64_t>(n0) ||
              static_cast<uint64_t>(y + o.dy) >= static_cast<uint64_t>(n1))
            continue;
          const double c = o.w + static_cast<double>(fv[centre + o.delta]);
          if (c < best) best = c;
        }
        lookups += k + 1;
        if (k == K && best > w_table && w_table <= reach2) {  // not settled inside the table: the offsets it lacks
          for (int64_t zz = 0; zz < n0; ++zz) {
            const double wz = s0sq * double((zz - z) * (zz - z));
            if (wz >= best) continue;
            for (int64_t yy = 0; yy < n1; ++yy) {
              const double w = wz + s1sq * double((yy - y) * (yy - y));
              if (w < w_table || w >= best || w > reach2) continue;
              const double c = w + static_cast<double>(fv[(zz * n1 + yy) * n2 + x]);
              if (c < best) best = c;
            }
          }
          lookups += n0 * n1;
        }
        out[pos++] = finish(static_cast<float>(std::sqrt(best)));
      }
      spent.fetch_add(lookups, std::memory_order_relaxed);
    }
  });

  // Volumes over budget: the full transform, then its values at the queries.
  std::vector<float> full;
  std::vector<uint8_t> inverted;
  for (int64_t b = 0; b < batch; ++b) {
    if (work[static_cast<size_t>(b)].load(std::memory_order_relaxed) <= budget) continue;
    full.resize(static_cast<size_t>(vol));
    const uint8_t* zeros_are_features = mask + b * vol;  // edt_cpu measures the distance to zeros
    if (features_nonzero) {
      inverted.resize(static_cast<size_t>(vol));
      for (int64_t i = 0; i < vol; ++i) inverted[static_cast<size_t>(i)] = mask[b * vol + i] == 0;
      zeros_are_features = inverted.data();
    }
    edt_cpu(zeros_are_features, full.data(), 1, shape, spacing, false, threads);
    parallel_for(lines_per_volume, threads, [&](int64_t begin, int64_t end) {
      for (int64_t zy = begin; zy < end; ++zy) {
        const int64_t line = b * lines_per_volume + zy;
        int64_t pos = first[static_cast<size_t>(line)];
        const uint8_t* q = query + line * n2;
        const float* d = full.data() + zy * n2;
        for (int64_t x = 0; x < n2; ++x)
          if (q[x]) out[pos++] = finish(d[x]);
      }
    });
  }
}

}  // namespace

void edt_query_cpu(const uint8_t* mask, const uint8_t* query, float* out, int64_t capacity, int64_t batch,
                   const std::vector<int64_t>& shape, const std::vector<double>& spacing, bool features_nonzero,
                   double max_distance, int threads) {
  // the search and its float32 squares in the safe range, the distances scaled back at the end (the
  // max_distance cut compares like with like: both scaled by the same power of two)
  const SpacingScale norm = normalise_spacing(spacing, shape);
  edt_query_normalised(mask, query, out, capacity, batch, shape, norm.spacing, features_nonzero,
                       max_distance / norm.scale, threads);
  scale_distances(out, capacity, norm.scale, false, threads);
}

}  // namespace fastloss
