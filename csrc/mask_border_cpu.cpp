// Border voxels of one (b, c) volume of a binary mask inside a box, as MONAI's get_mask_edges defines them
// (CPU): m & ~erode(m), m = (x != 0), erosion with the face-connected cross of the `nd` real axes, the
// outside of the image (and of the box, which holds all of m) counting as background.
//
// The box is first converted to a uint8 copy with a one-voxel zero halo along every real axis, so that
// the erosion reads all six neighbours of every voxel without a branch (a padded axis, size 1, uses the
// row itself as its neighbours: x & x = x). Both loops run along rows and vectorise.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "edt.h"
#include "mask_view.h"
#include "parallel.h"

namespace fastloss {
namespace {

template <class Word, bool kUnit>
void convert_row(const Word* __restrict__ x, int64_t stride, int64_t n, Word zero_mask, uint8_t* __restrict__ out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>((x[kUnit ? i : i * stride] & zero_mask) != 0);
}

// out[i] = c[i] & ~(c[i-1] & c[i+1] & y0[i] & y1[i] & z0[i] & z1[i]); returns the number of ones written.
uint32_t erode_row(const uint8_t* __restrict__ c, const uint8_t* __restrict__ y0, const uint8_t* __restrict__ y1,
                   const uint8_t* __restrict__ z0, const uint8_t* __restrict__ z1, uint8_t* __restrict__ out,
                   int64_t n) {
  uint32_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t inner = c[i - 1] & c[i + 1] & y0[i] & y1[i] & z0[i] & z1[i];
    const uint8_t e = static_cast<uint8_t>(c[i] & (inner ^ 1));
    out[i] = e;
    count += e;
  }
  return count;
}

}  // namespace

int64_t mask_border_cpu(const MaskView& m, int64_t b, int64_t c, const int64_t lo[3], const int64_t hi[3], int nd,
                        uint8_t* out, int threads) {
  const int64_t h0 = hi[0] - lo[0], h1 = hi[1] - lo[1], h2 = hi[2] - lo[2];
  if (h0 <= 0 || h1 <= 0 || h2 <= 0) return 0;
  // halo along the real axes (the last nd); axis 2 (x) is always real
  const int64_t p0 = nd >= 3 ? 1 : 0, p1 = nd >= 2 ? 1 : 0;
  const int64_t w0 = h0 + 2 * p0, w1 = h1 + 2 * p1, w2 = h2 + 2;
  std::vector<uint8_t> pad(static_cast<size_t>(w0 * w1 * w2), 0);
  threads = resolve_threads(threads);
  if (h0 * h1 * h2 < (int64_t(1) << 16)) threads = 1;
  const int64_t base = b * m.strides[0] + c * m.strides[1];
  parallel_for(h0, threads, [&](int64_t begin, int64_t end) {
    for (int64_t z = begin; z < end; ++z) {
      for (int64_t y = 0; y < h1; ++y) {
        const int64_t off = base + (lo[0] + z) * m.strides[2] + (lo[1] + y) * m.strides[3] + lo[2] * m.strides[4];
        uint8_t* row = pad.data() + ((z + p0) * w1 + (y + p1)) * w2 + 1;
        dispatch_word(m.word_size, [&](auto tag) {
          using Word = decltype(tag);
          const Word* x = static_cast<const Word*>(m.data) + off;
          const Word zm = static_cast<Word>(m.zero_mask);
          if (m.strides[4] == 1) {
            convert_row<Word, true>(x, 1, h2, zm, row);
          } else {
            convert_row<Word, false>(x, m.strides[4], h2, zm, row);
          }
          return 0;
        });
      }
    }
  });
  std::vector<int64_t> plane_count(static_cast<size_t>(h0), 0);
  parallel_for(h0, threads, [&](int64_t begin, int64_t end) {
    for (int64_t z = begin; z < end; ++z) {
      int64_t count = 0;
      for (int64_t y = 0; y < h1; ++y) {
        auto row = [&](int64_t zz, int64_t yy) { return pad.data() + (zz * w1 + yy) * w2 + 1; };
        const int64_t zc = z + p0, yc = y + p1;
        const uint8_t* cur = row(zc, yc);
        count += erode_row(cur, p1 ? row(zc, yc - 1) : cur, p1 ? row(zc, yc + 1) : cur, p0 ? row(zc - 1, yc) : cur,
                           p0 ? row(zc + 1, yc) : cur, out + (z * h1 + y) * h2, h2);
      }
      plane_count[static_cast<size_t>(z)] = count;
    }
  });
  int64_t total = 0;
  for (int64_t v : plane_count) total += v;
  return total;
}

}  // namespace fastloss
