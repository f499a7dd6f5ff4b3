// The per-voxel logic of the skeletons, shared by the exact CPU thinning (skeleton_cpu.cpp), the parallel
// thinning's host driver (skeleton_parallel_host.cpp) and its CUDA kernels (skeleton_cuda.cu). Everything a
// kernel calls is an inline function marked FL_HD (__host__ __device__ under nvcc, plain inline otherwise),
// so that the CPU build (and CI, which has no GPU) runs the very code the GPU runs.
//
// 2D, Zhang & Suen as scikit-image 0.26 implements it: a pixel's 8 neighbours as an 8-bit code (bit 0
// north-west, 1 north, 2 north-east, 3 east, 4 south-east, 5 south, 6 south-west, 7 west; row - 1 is north)
// looked up in a 256-entry table: 1 = delete in the first sub-pass, 2 = in the second, 3 = in both, 0 = keep.
// Each sub-pass decides every pixel from the image as it was when the sub-pass began: the algorithm is
// parallel as it stands, so the GPU's 2D skeleton is scikit-image's.
//
// 3D, Lee, Kashyap & Chu 1994: a voxel's 3x3x3 neighbourhood is a 27-bit word, bit 9 (dp + 1) + 3 (dr + 1) +
// (dc + 1) for the voxel at offset (dp, dr, dc) in {-1, 0, 1}^3 (the centre is bit 13). A voxel is a candidate
// of a border direction when its face neighbour there is background and it is no end point (not exactly one of
// its 26 neighbours object); a candidate is deleted when deleting it leaves the Euler characteristic unchanged
// (the 8 octants' changes sum to 0) and its 26 neighbours form at most one 26-connected component (Lee's
// simple-point test, as scikit-image computes it). The parallel passes (skeleton_parallel_host.cpp) delete the
// candidates of one parity subfield at a time.
//
// The image edge is background: the neighbourhood readers below check bounds (a voxel off the image reads 0),
// so no input makes them read outside the volume. Indices are int64.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define FL_HD __host__ __device__ __forceinline__
#else
#define FL_HD inline
#endif

namespace fastloss {
namespace skel {

// ---------------------------------------------------------------------------------------------------------
// Tables (built on the host, read by value on both sides)

struct ZhangOverride {
  int code, value;
};
// The codes where scikit-image's table is not the textbook rule, with its value there (found by comparing
// the two tables; 25 of the 256 entries).
constexpr ZhangOverride kZhangOverrides[] = {
    {3, 1},   {6, 1},   {10, 3},  {11, 1},  {12, 1},  {14, 1},  {24, 2},  {26, 2},  {40, 3},
    {48, 0},  {56, 2},  {96, 2},  {104, 2}, {108, 2}, {129, 0}, {130, 3}, {131, 1}, {134, 1},
    {160, 3}, {161, 1}, {176, 2}, {192, 2}, {194, 1}, {198, 1}, {224, 2},
};

// scikit-image's Zhang-Suen table entry of neighbour code n: Zhang & Suen's conditions (2 <= B <= 6 object
// neighbours, exactly one 0 -> 1 transition around the ring P2..P9, the sub-passes' products), then the overrides.
inline int zhang_value(int n) {
  for (const ZhangOverride& o : kZhangOverrides)
    if (o.code == n) return o.value;
  // P2..P9: north, north-east, east, ..., north-west (clockwise from north): bits 1, 2, ..., 7, 0
  int P[10];
  for (int k = 0; k < 8; ++k) P[k + 2] = (n >> ((k + 1) & 7)) & 1;
  int B = 0, A = 0;
  for (int k = 2; k <= 9; ++k) B += P[k];
  for (int k = 2; k <= 9; ++k) A += (P[k] == 0 && P[k == 9 ? 2 : k + 1] == 1);
  const bool ok = B >= 2 && B <= 6 && A == 1;
  const bool first = ok && P[2] * P[4] * P[6] == 0 && P[4] * P[6] * P[8] == 0;
  const bool second = ok && P[2] * P[4] * P[8] == 0 && P[2] * P[6] * P[8] == 0;
  return (first ? 1 : 0) | (second ? 2 : 0);
}

// A 2x2x2 block's voxels around their common corner are indexed by (a, b, c) in {0, 1}^3, bit 4a + 2b + c,
// the voxel being tested at (0, 0, 0). block_share(v) is the block's share of the Euler characteristic
// (26-connectivity) of the union of the closed unit cubes of its voxels, times 8: the corner point, its 6
// half-edges, 12 quarter-faces and 8 eighth-cubes give V - E/2 + F/4 - C/8; times 8: 8 [any voxel] - 4 #edges
// + 2 #faces - #voxels, an edge present when one of the 4 voxels around it is, a face when one of its 2 is.
inline int block_share(int v) {
  if (v == 0) return 0;
  auto at = [v](const int idx[3]) { return (v >> (4 * idx[0] + 2 * idx[1] + idx[2])) & 1; };
  int edges = 0, faces = 0, voxels = 0;
  for (int axis = 0; axis < 3; ++axis)  // the half-edge from the corner on side `value` of `axis`: its 4 voxels
    for (int value = 0; value < 2; ++value) {
      int any = 0;
      for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 2; ++t) {
          int idx[3];
          idx[axis] = value;
          idx[(axis + 1) % 3] = s;
          idx[(axis + 2) % 3] = t;
          any |= at(idx);
        }
      edges += any;
    }
  for (int axis = 0; axis < 3; ++axis)  // the quarter-face in the plane normal to `axis`, held by 2 voxels
    for (int s = 0; s < 2; ++s)
      for (int t = 0; t < 2; ++t) {
        int any = 0;
        for (int value = 0; value < 2; ++value) {
          int idx[3];
          idx[axis] = value;
          idx[(axis + 1) % 3] = s;
          idx[(axis + 2) % 3] = t;
          any |= at(idx);
        }
        faces += any;
      }
  for (int b = 0; b < 8; ++b) voxels += (v >> b) & 1;
  return 8 - 4 * edges + 2 * faces - voxels;
}

// The change (times 8) of a block's Euler share when its tested voxel (bit 0) is deleted, by block code:
// share(with it) - share(without it). These are column delta G_26 of Lee et al.'s Table 2.
inline int euler_delta_value(int v) { return block_share(v | 1) - block_share(v & ~1); }

struct Tables {
  uint8_t zhang[256];       // zhang_value
  int8_t euler_delta[256];  // euler_delta_value
};

inline Tables make_tables() {
  Tables t{};
  for (int n = 0; n < 256; ++n) {
    t.zhang[n] = static_cast<uint8_t>(zhang_value(n));
    t.euler_delta[n] = static_cast<int8_t>(euler_delta_value(n));
  }
  return t;
}

// ---------------------------------------------------------------------------------------------------------
// 2D

// The neighbour code of pixel (r, c) of an (H, W) image (non-zero = object), pixels off the image background.
FL_HD int zhang_code(const uint8_t* im, int64_t H, int64_t W, int64_t r, int64_t c) {
  const int dr[8] = {-1, -1, -1, 0, 1, 1, 1, 0};
  const int dc[8] = {-1, 0, 1, 1, 1, 0, -1, -1};
  int code = 0;
  if (r > 0 && r + 1 < H && c > 0 && c + 1 < W) {
    for (int k = 0; k < 8; ++k) code |= (im[(r + dr[k]) * W + (c + dc[k])] != 0) << k;
  } else {
    for (int k = 0; k < 8; ++k) {
      const int64_t rr = r + dr[k], cc = c + dc[k];
      if (rr >= 0 && rr < H && cc >= 0 && cc < W) code |= (im[rr * W + cc] != 0) << k;
    }
  }
  return code;
}

// The value of pixel (r, c) after sub-pass `which` (1 or 2) of the image `src` as it was when the sub-pass began.
FL_HD uint8_t zhang_after(const uint8_t* src, int64_t H, int64_t W, int64_t r, int64_t c, int which,
                          const uint8_t* table) {
  if (!src[r * W + c]) return 0;
  return (table[zhang_code(src, H, W, r, c)] & which) ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------------------
// 3D

constexpr uint32_t kAll27 = (1u << 27) - 1;
constexpr uint32_t kCentre = 1u << 13;
// the bits whose column (bit % 3) is 0 / 2, whose row ((bit / 3) % 3) is 0 / 2
constexpr uint32_t kCol0 = 0x1249249u, kCol2 = 0x4924924u, kRow0 = 0x01C0E07u, kRow2 = 0x70381C0u;

// The 3x3x3 box dilation of a set of neighbourhood bits, clipped to the neighbourhood (every step masked to
// the 27 bits: a bit shifted past bit 26 would come back in the next step's >>).
FL_HD uint32_t dilate27(uint32_t m) {
  m = (m | ((m << 1) & ~kCol0) | ((m >> 1) & ~kCol2)) & kAll27;
  m = (m | ((m << 3) & ~kRow0) | ((m >> 3) & ~kRow2)) & kAll27;
  return (m | (m << 9) | (m >> 9)) & kAll27;
}

// Lee's N(v) labelling: do the 26 neighbours (centre left out) form at most one 26-connected component?
// (scikit-image's octree labelling joins two neighbours when some octant holds both: 26-adjacency.)
FL_HD bool is_simple(uint32_t nb) {
  const uint32_t fg = nb & ~kCentre;
  if (fg == 0) return true;
  uint32_t comp = fg & (~fg + 1);  // the lowest neighbour, grown inside fg until it stops
  for (;;) {
    const uint32_t grown = dilate27(comp) & fg;
    if (grown == comp) break;
    comp = grown;
  }
  return comp == fg;
}

// the centre and exactly one neighbour (a two-bit word: with its lowest bit cleared, one bit is left)
FL_HD bool is_endpoint(uint32_t nb) {
  const uint32_t rest = nb & (nb - 1);
  return rest != 0 && (rest & (rest - 1)) == 0;
}

// The block code of the octant with signs (sp, sr, sc) in {-1, 1}^3: block bit 4a + 2b + c is the
// neighbourhood voxel at offset (a sp, b sr, c sc).
FL_HD unsigned octant_code(uint32_t nb, int sp, int sr, int sc) {
  unsigned code = 0;
  for (int k = 0; k < 8; ++k) {
    const int a = (k >> 2) & 1, b = (k >> 1) & 1, c = k & 1;
    const int bit = 9 * (1 + a * sp) + 3 * (1 + b * sr) + (1 + c * sc);
    code |= ((nb >> bit) & 1u) << k;
  }
  return code;
}

// Lee's condition 1: deleting the centre leaves the Euler characteristic unchanged (the 8 octants' changes,
// each read from the delta table, sum to 0).
FL_HD bool is_euler_invariant(uint32_t nb, const int8_t* delta) {
  int sum = 0;
  for (int o = 0; o < 8; ++o) sum += delta[octant_code(nb, (o & 4) ? 1 : -1, (o & 2) ? 1 : -1, (o & 1) ? 1 : -1)];
  return sum == 0;
}

// The 27-bit neighbourhood word of voxel (p, r, c) of a (D, H, W) volume (non-zero = object), voxels off the
// volume background.
FL_HD uint32_t gather27(const uint8_t* im, int64_t D, int64_t H, int64_t W, int64_t p, int64_t r, int64_t c) {
  uint32_t m = 0;
  if (p > 0 && p + 1 < D && r > 0 && r + 1 < H && c > 0 && c + 1 < W) {
    const uint8_t* base = im + ((p - 1) * H + (r - 1)) * W + (c - 1);
    for (int dp = 0; dp < 3; ++dp)
      for (int dr = 0; dr < 3; ++dr) {
        const uint8_t* row = base + (dp * H + dr) * W;
        const int bit = 9 * dp + 3 * dr;
        m |= (uint32_t(row[0] != 0) << bit) | (uint32_t(row[1] != 0) << (bit + 1)) |
             (uint32_t(row[2] != 0) << (bit + 2));
      }
    return m;
  }
  for (int dp = -1; dp <= 1; ++dp) {
    const int64_t pp = p + dp;
    if (pp < 0 || pp >= D) continue;
    for (int dr = -1; dr <= 1; ++dr) {
      const int64_t rr = r + dr;
      if (rr < 0 || rr >= H) continue;
      for (int dc = -1; dc <= 1; ++dc) {
        const int64_t cc = c + dc;
        if (cc < 0 || cc >= W) continue;
        m |= uint32_t(im[(pp * H + rr) * W + cc] != 0) << (9 * (dp + 1) + 3 * (dr + 1) + (dc + 1));
      }
    }
  }
  return m;
}

// The border directions a (D, H, W) volume is thinned in: a volume one voxel deep uses the four in-plane ones
// only, as scikit-image does.
FL_HD int num_directions(int64_t D) { return D == 1 ? 4 : 6; }

// Whether voxel (p, r, c) is a border voxel of direction `direction`: an object voxel whose face neighbour in
// that direction is background (off the volume counts as background). The directions in scikit-image's order
// (its borders 4, 3, 2, 1, 5, 6): the neighbour at r-1, r+1, c+1, c-1, p+1, p-1.
FL_HD bool is_border(const uint8_t* im, int64_t D, int64_t H, int64_t W, int64_t p, int64_t r, int64_t c,
                     int direction) {
  if (!im[(p * H + r) * W + c]) return false;
  const int64_t pp = p + (direction == 4 ? 1 : direction == 5 ? -1 : 0);
  const int64_t rr = r + (direction == 0 ? -1 : direction == 1 ? 1 : 0);
  const int64_t cc = c + (direction == 2 ? 1 : direction == 3 ? -1 : 0);
  return !(pp >= 0 && pp < D && rr >= 0 && rr < H && cc >= 0 && cc < W && im[(pp * H + rr) * W + cc]);
}

// Whether voxel (p, r, c) is one of Lee's candidates of direction `direction`: a border voxel of that direction
// and no end point. The parallel passes mark the candidates of the image as the direction's pass begins (as the
// sequential algorithm collects them), so that a voxel bared or made an end point by a deletion of the same
// pass is judged again in the next sweep, not in this one.
FL_HD bool is_candidate(const uint8_t* im, int64_t D, int64_t H, int64_t W, int64_t p, int64_t r, int64_t c,
                        int direction) {
  return is_border(im, D, H, W, p, r, c, direction) && !is_endpoint(gather27(im, D, H, W, p, r, c));
}

// Whether deleting object voxel (p, r, c) keeps the topology, in the image as it is: Euler invariant and simple
// (Lee's test). The parallel passes delete the candidates of one parity subfield at a time that pass it: no two
// voxels of a subfield are 26-neighbours, so the test of each reads none of the others, whatever the order, and
// deleting them all at once deletes simple points one after the other.
FL_HD bool lee_deletable(const uint8_t* im, int64_t D, int64_t H, int64_t W, int64_t p, int64_t r, int64_t c,
                         const int8_t* delta) {
  const uint32_t nb = gather27(im, D, H, W, p, r, c);
  return is_euler_invariant(nb, delta) && is_simple(nb);
}

// The voxels of parity subfield s (bit 2: p % 2, bit 1: r % 2, bit 0: c % 2) along an axis of n voxels whose
// parity is q: ceil((n - q) / 2).
FL_HD int64_t subfield_count(int64_t n, int q) { return n > q ? (n - q + 1) / 2 : 0; }

}  // namespace skel

// The parallel thinning of `batch` contiguous uint8 masks of `shape` (2 sizes: Zhang-Suen sub-passes; 3 sizes:
// Lee's candidates of each direction, one parity subfield at a time), non-zero = foreground, into contiguous
// uint8 `out` (0/1, not aliasing `mask`), on the CPU: the passes of skeletonize_cuda, one batch item per thread
// (skeleton_parallel_host.cpp).
void skeletonize_parallel_host(const uint8_t* mask, uint8_t* out, int64_t batch, const std::vector<int64_t>& shape,
                               int threads);

// The same passes on the GPU, enqueued on `stream` (a cudaStream_t), with one host synchronisation per sweep.
// `scratch`: batch * prod(shape) bytes of device memory (2D: the sub-passes' second image; 3D: the candidates
// of the direction's pass); `flag`: one device int32.
// Returns 0 or a cudaError_t code (skeleton_cuda.cu; built only with FASTLOSS_WITH_CUDA).
int skeletonize_cuda(const uint8_t* mask, uint8_t* out, uint8_t* scratch, int32_t* flag, int64_t batch,
                     const std::vector<int64_t>& shape, void* stream);

}  // namespace fastloss
