// Skeletons of binary masks on the CPU: the thinning algorithms of scikit-image 0.26's
// skimage.morphology.skeletonize, re-implemented so that the result is the same voxel for voxel.
//
// 2D (Zhang & Suen 1984 as scikit-image implements it): repeated iterations of two parallel sub-passes.
// A sub-pass decides every foreground pixel from the image as it was when the sub-pass began (its 8
// neighbours as an 8-bit code looked up in a table) and then deletes the chosen pixels all at once; the
// iterations stop when neither sub-pass deleted anything. The table is scikit-image's: the textbook
// Zhang-Suen conditions (2 <= B <= 6 neighbours, one 0->1 transition around the ring, the sub-pass products)
// for all but 25 codes, where scikit-image's table differs (kZhangOverrides below; found by comparing the two).
//
// 3D (Lee, Kashyap & Chu 1994, in the sequential form of scikit-image / ImageJ's Skeletonize3D): sweeps over
// six border directions (W, E, S, N, U, B in scikit-image's order: r-1, r+1, c+1, c-1, p+1, p-1 neighbour
// empty) until one whole sweep deletes nothing. Per direction: (1) collect, in C order over the image as it is,
// the foreground voxels whose neighbour in that direction is background and that are no end point (exactly
// one of 26 neighbours), Euler invariant (Lee's condition 1, the 8 octants' Euler changes sum to 0) and simple
// (the 26 neighbours form at most one 26-connected component); (2) re-check the candidates in that order on the
// changing image and delete each that is still simple. A volume one voxel deep (D == 1) uses the four in-plane
// directions only, as scikit-image does (its padded depth is 3). The order matters (the result depends on
// it), so each volume is thinned sequentially; threads run over batch items.
//
// Both pad the volume with one layer of zeros (the image edge is background, as in scikit-image), so every
// neighbourhood read stays inside the padded buffer whatever the input. All indices are int64.
#include "skeleton_cpu.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <string>

#include "parallel.h"
#include "skeleton_parallel.h"

namespace fastloss {
namespace {

// ---------------------------------------------------------------------------------------------------------
// 2D: Zhang-Suen with scikit-image's table
//
// The 8-bit code of a pixel's neighbours: bit 0 north-west, 1 north, 2 north-east, 3 east, 4 south-east,
// 5 south, 6 south-west, 7 west (row - 1 is north). Table value: 1 = delete in the first sub-pass, 2 = in the
// second, 3 = in both, 0 = keep.

// scikit-image's table (skeleton_parallel.h: the textbook rule and its 25 overrides), shared with the parallel
// thinning's host driver and CUDA kernels.
std::array<uint8_t, 256> make_zhang_table() {
  std::array<uint8_t, 256> t{};
  for (int n = 0; n < 256; ++n) t[static_cast<size_t>(n)] = static_cast<uint8_t>(skel::zhang_value(n));
  return t;
}

const std::array<uint8_t, 256>& zhang_table() {
  static const std::array<uint8_t, 256> t = make_zhang_table();
  return t;
}

// Appends base + c for the non-zero bytes d[c] (0/1), c in [0, n), in order; 8 bytes per step where they are 0.
inline void append_nonzero(const uint8_t* d, int64_t n, int64_t base, std::vector<int64_t>& out) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    uint64_t w;
    std::memcpy(&w, d + c, 8);
    while (w) {
#if defined(__GNUC__) || defined(__clang__)
      const int byte = __builtin_ctzll(w) >> 3;
#else
      int byte = 0;
      while (!((w >> (8 * byte)) & 0xFF)) ++byte;
#endif
      out.push_back(base + c + byte);
      w &= w - 1;  // the byte is 1: clearing its lowest set bit clears it
    }
  }
  for (; c < n; ++c)
    if (d[c]) out.push_back(base + c);
}

// One (H, W) image: `src` read, `dst` written (0/1). A pixel whose 8 neighbours are all foreground (code 255)
// is never deleted (no sub-pass deletes a code with more than 6 neighbours), so each sub-pass looks at the
// pixels with a background neighbour only (a pixel joins them when a neighbour is deleted); a sub-pass decides
// every pixel from the image as it was when the sub-pass began, so their order does not matter.
void zhang_one(const uint8_t* src, uint8_t* dst, int64_t H, int64_t W) {
  const auto& table = zhang_table();
  const int64_t sw = W + 2;  // padded row stride
  std::vector<uint8_t> img(static_cast<size_t>((H + 2) * sw), 0);
  uint8_t* im = img.data();
  std::vector<int64_t> fg;  // padded indices of the foreground pixels
  for (int64_t r = 0; r < H; ++r) {
    const uint8_t* s = src + r * W;
    const int64_t base = (r + 1) * sw + 1;
    for (int64_t c = 0; c < W; ++c) im[base + c] = s[c] != 0;
    append_nonzero(im + base, W, base, fg);
  }
  const int64_t nb[8] = {-sw - 1, -sw, -sw + 1, 1, sw + 1, sw, sw - 1, -1};  // bit k of the code
  auto code_of = [&](int64_t i) {
    int code = 0;
    for (int k = 0; k < 8; ++k) code |= im[i + nb[k]] << k;
    return code;
  };
  std::vector<uint8_t> on_surface(img.size(), 0);
  std::vector<int64_t> surface, doomed;
  for (const int64_t i : fg)
    if (code_of(i) != 255) {
      on_surface[static_cast<size_t>(i)] = 1;
      surface.push_back(i);
    }
  fg.clear();
  fg.shrink_to_fit();
  bool removed = true;
  while (removed) {
    removed = false;
    for (int pass = 0; pass < 2; ++pass) {
      const uint8_t which = pass == 0 ? 1 : 2;
      doomed.clear();
      for (const int64_t i : surface)
        if (table[static_cast<size_t>(code_of(i))] & which) doomed.push_back(i);
      if (doomed.empty()) continue;
      removed = true;
      for (const int64_t i : doomed) im[i] = 0;
      size_t k = 0;
      for (const int64_t i : surface)
        if (im[i]) surface[k++] = i;
      surface.resize(k);
      for (const int64_t i : doomed)
        for (const int64_t o : nb) {
          const int64_t n = i + o;
          if (im[n] && !on_surface[static_cast<size_t>(n)]) {
            on_surface[static_cast<size_t>(n)] = 1;
            surface.push_back(n);
          }
        }
    }
  }
  for (int64_t r = 0; r < H; ++r)
    for (int64_t c = 0; c < W; ++c) dst[r * W + c] = im[(r + 1) * sw + (c + 1)];
}

// ---------------------------------------------------------------------------------------------------------
// 3D: Lee et al. 1994
//
// A neighbourhood is a 27-bit word: bit 9 (dp + 1) + 3 (dr + 1) + (dc + 1) for the voxel at offset
// (dp, dr, dc) in {-1, 0, 1}^3; the centre is bit 13.

// The simple-point and end-point tests and the Euler octants are skeleton_parallel.h's (shared with the parallel
// thinning); this file adds the sequential scan, a padded neighbourhood gather and a faster Euler table built
// from the same octants and deltas.
using skel::is_endpoint;
using skel::is_simple;

// The Euler test sums, over the 8 octants, delta(block code). The 4 octants on one side of the centre plane
// (dp = -1 or dp = +1) read the centre plane and that side's plane only, and delta is the same for a block and
// its mirror image, so one table serves both sides: plane_sum[far plane's 9 bits << 8 | centre plane's 8 bits
// other than the centre] = the 4 octants' sum with the far plane at dp = -1. 2^17 int8 (128 KiB).
struct EulerTables {
  std::vector<int8_t> plane_sum;
};

EulerTables make_euler_tables() {
  std::array<int8_t, 256> delta{};  // share(with centre) - share(without), indexed by a block code
  for (int v = 0; v < 256; ++v) delta[static_cast<size_t>(v)] = static_cast<int8_t>(skel::euler_delta_value(v));
  EulerTables t;
  t.plane_sum.resize(size_t(1) << 17);
  for (uint32_t idx = 0; idx < (1u << 17); ++idx) {
    const uint32_t far = idx >> 8, mid8 = idx & 0xFF;
    // centre plane's 9 bits (bit 4 the centre, always set), then the 27-bit word with the far plane at dp = -1
    const uint32_t mid9 = (mid8 & 0xF) | (1u << 4) | ((mid8 >> 4) << 5);
    const uint32_t nb = far | (mid9 << 9);
    int sum = 0;
    for (int o = 0; o < 4; ++o) sum += delta[skel::octant_code(nb, -1, (o & 2) ? 1 : -1, (o & 1) ? 1 : -1)];
    t.plane_sum[idx] = static_cast<int8_t>(sum);
  }
  return t;
}

const EulerTables& euler_tables() {
  static const EulerTables t = make_euler_tables();
  return t;
}

inline bool is_euler_invariant(uint32_t nb, const int8_t* plane_sum) {
  const uint32_t lo = nb & 0x1FF, hi = nb >> 18, mid = (nb >> 9) & 0x1FF;
  const uint32_t mid8 = (mid & 0xF) | ((mid >> 5) << 4);
  return plane_sum[(lo << 8) | mid8] + plane_sum[(hi << 8) | mid8] == 0;
}

struct Lee {
  int64_t sp, sr;  // padded strides of p and r (c is 1)
  std::array<int64_t, 27> off{};
  Lee(int64_t H, int64_t W) : sp((H + 2) * (W + 2)), sr(W + 2) {
    for (int dp = -1; dp <= 1; ++dp)
      for (int dr = -1; dr <= 1; ++dr)
        for (int dc = -1; dc <= 1; ++dc) off[static_cast<size_t>(9 * (dp + 1) + 3 * (dr + 1) + (dc + 1))] = dp * sp + dr * sr + dc;
  }
  // The 27 voxels around i, three at a time: a row's bytes (0/1) at i-1, i, i+1 read as one little-endian word
  // (the buffer has 8 bytes of slack at its end) and packed into 3 bits by one multiplication.
  uint32_t gather(const uint8_t* im, int64_t i) const {
    uint32_t m = 0;
    for (int row = 0; row < 9; ++row) {
      uint32_t w;
      std::memcpy(&w, im + i + off[static_cast<size_t>(3 * row)], 4);
      m |= (((w & 0x010101u) * 0x4081u) >> 14 & 7u) << (3 * row);
    }
    return m;
  }
};

// Per-thread buffers of lee_one, kept between volumes and calls (the kernels' threads persist with OpenMP) so
// that a volume does not pay page faults for fresh buffers; released after a volume whose buffers exceed 64 MiB.
struct LeeScratch {
  std::vector<uint8_t> img, flags;
  std::vector<int64_t> alive, surface, joined, merged, scratch, candidates;
  std::vector<int64_t> joined_by_face[6];
  void trim() {
    if (img.capacity() + flags.capacity() + 8 * (alive.capacity() + surface.capacity()) > (size_t(64) << 20))
      *this = LeeScratch();
  }
};

LeeScratch& lee_scratch() {
  static thread_local LeeScratch s;
  return s;
}

void lee_one(const uint8_t* src, uint8_t* dst, int64_t D, int64_t H, int64_t W) {
  const Lee g(H, W);
  const int64_t sp = g.sp, sr = g.sr;
  LeeScratch& w = lee_scratch();
  std::vector<uint8_t>& img = w.img;
  img.assign(static_cast<size_t>((D + 2) * sp + 8), 0);  // + 8: slack for gather's word loads
  std::vector<int64_t>& alive = w.alive;  // padded indices of the foreground voxels, C order
  alive.clear();
  uint8_t* im = img.data();
  for (int64_t p = 0; p < D; ++p)
    for (int64_t r = 0; r < H; ++r) {
      const uint8_t* s = src + (p * H + r) * W;
      const int64_t base = (p + 1) * sp + (r + 1) * sr + 1;
      uint8_t* d = im + base;
      for (int64_t c = 0; c < W; ++c) d[c] = s[c] != 0;  // 0/1 (vectorises)
      append_nonzero(d, W, base, alive);
    }
  // scikit-image's border order 4, 3, 2, 1, 5, 6: the neighbour at r-1, r+1, c+1, c-1, p+1, p-1 is empty
  const int64_t border_offset[6] = {-sr, sr, 1, -1, sp, -sp};
  const int num_borders = D == 1 ? 4 : 6;
  const int8_t* plane_sum = euler_tables().plane_sum.data();
  // Only voxels with a background face neighbour can be border points of any direction: the scans run over
  // that surface (kept in C order; a voxel joins it when a face neighbour is deleted), not over all of the
  // foreground. The candidate test (no end point, Euler invariant, simple) depends on the 27 voxels around a
  // voxel only, so its result is kept per voxel (kOk) until a voxel next to it is deleted (kDirty). Both give
  // the same answers as scikit-image's full scans, at a fraction of the cost.
  constexpr uint8_t kDirty = 1, kOk = 2, kSurface = 4;
  std::vector<uint8_t>& flags = w.flags;
  flags.assign(img.size(), kDirty);
  uint8_t* fl = flags.data();
  const int64_t face[6] = {-sp, -sr, -1, 1, sr, sp};
  std::vector<int64_t>&surface = w.surface, &joined = w.joined, &merged = w.merged, &scratch = w.scratch;
  surface.clear();
  auto& joined_by_face = w.joined_by_face;  // i + face[f] for candidates i in C order: each list sorted
  for (const int64_t i : alive) {
    bool open = false;
    for (const int64_t f : face) open |= im[i + f] == 0;
    if (open) {
      fl[i] |= kSurface;
      surface.push_back(i);
    }
  }
  std::vector<int64_t>& candidates = w.candidates;
  int unchanged = 0;
  while (unchanged < num_borders) {
    unchanged = 0;
    for (int j = 0; j < num_borders; ++j) {
      const int64_t bo = border_offset[j];
      candidates.clear();
      for (const int64_t i : surface) {
        if (im[i + bo]) continue;
        if (fl[i] & kDirty) {
          const uint32_t nb = g.gather(im, i);
          fl[i] = static_cast<uint8_t>((fl[i] & kSurface) |
                                       ((!is_endpoint(nb) && is_euler_invariant(nb, plane_sum) && is_simple(nb)) ? kOk : 0));
        }
        if (fl[i] & kOk) candidates.push_back(i);
      }
      // sequential re-check: a candidate whose neighbourhood is unchanged since its test is still simple
      bool changed = false;
      for (auto& v : joined_by_face) v.clear();
      for (const int64_t i : candidates)
        if (!(fl[i] & kDirty) || is_simple(g.gather(im, i))) {
          im[i] = 0;
          changed = true;
          for (int row = 0; row < 9; ++row) {  // kDirty into the 27 flags, a row of 3 at a time (+ 8 bytes slack)
            uint8_t* f = fl + i + g.off[static_cast<size_t>(3 * row)];
            uint32_t w;
            std::memcpy(&w, f, 4);
            w |= 0x010101u * kDirty;
            std::memcpy(f, &w, 4);
          }
          for (int f = 0; f < 6; ++f) {
            const int64_t n = i + face[f];
            if (im[n] && !(fl[n] & kSurface)) {
              fl[n] |= kSurface;
              joined_by_face[f].push_back(n);
            }
          }
        }
      if (changed) {  // drop the deleted voxels and merge the ones that joined, in C order
        // the six sorted lists into one (pairwise merges; a voxel joins once, so they are disjoint)
        joined.clear();
        for (const auto& v : joined_by_face) {
          if (v.empty()) continue;
          scratch.resize(joined.size() + v.size());
          std::merge(joined.begin(), joined.end(), v.begin(), v.end(), scratch.begin());
          joined.swap(scratch);
        }
        merged.clear();
        size_t a = 0;
        for (const int64_t i : surface) {
          if (!im[i]) continue;
          while (a < joined.size() && joined[a] < i) merged.push_back(joined[a++]);
          merged.push_back(i);
        }
        while (a < joined.size()) merged.push_back(joined[a++]);
        surface.swap(merged);
      } else {
        ++unchanged;
      }
    }
  }
  for (int64_t p = 0; p < D; ++p)
    for (int64_t r = 0; r < H; ++r)
      for (int64_t c = 0; c < W; ++c) dst[(p * H + r) * W + c] = im[(p + 1) * sp + (r + 1) * sr + (c + 1)];
  w.trim();
}

}  // namespace

void skeletonize_cpu(const uint8_t* mask, uint8_t* out, int64_t batch, const std::vector<int64_t>& shape,
                     int threads) {
  if (!mask || !out) throw std::invalid_argument("null data pointer");
  if (shape.size() != 2 && shape.size() != 3)
    throw std::invalid_argument("skeletonize expects 2 or 3 spatial dims, got " + std::to_string(shape.size()));
  if (batch < 1) throw std::invalid_argument("expected batch >= 1, got " + std::to_string(batch));
  int64_t n = 1;
  for (const int64_t s : shape) {
    if (s < 1) throw std::invalid_argument("expected positive sizes, got " + std::to_string(s));
    n *= s;
  }
  (void)zhang_table();  // built once, before the threads
  (void)euler_tables();
  const int t = resolve_threads(threads);
  parallel_for(batch, t, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (shape.size() == 2)
        zhang_one(mask + b * n, out + b * n, shape[0], shape[1]);
      else
        lee_one(mask + b * n, out + b * n, shape[0], shape[1], shape[2]);
    }
  });
}

}  // namespace fastloss
