// Value check and per-(b, c) bounding boxes of two binary masks, in one read of each (CPU).
//
// The CPU surface metrics cut every (b, c) volume to the box of its foreground p | g (outside it both
// masks are 0, so borders and border distances are unchanged) and must reject values other than 0 and 1.
// This reads each element once, writes nothing per voxel, and works along rows of the last axis:
// - last axis contiguous: per row an OR-reduction (vectorises) and scalar scans for the first and last
//   non-zero, only in rows that have one;
// - channels-last (channel stride 1, x stride C: the row (b, z, y) of every channel is n * C contiguous
//   words): 0/1 flags of the whole interleaved row (vectorises), then every channel's first and last x
//   from the flags in one sequential sweep;
// - any other layout: a strided scalar scan.
// Work items are (b, z) planes with every channel, so that a channels-last plane is read once for all
// its channels. Planes' boxes are merged with min/max and bad-row counts summed as integers: the result
// does not depend on the threads.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "edt.h"
#include "mask_view.h"
#include "parallel.h"

namespace fastloss {
namespace {

struct RowScan {
  int32_t first, last;  // first non-zero index and one past the last (n, 0 when none)
  bool bad;             // some element is neither 0 nor 1
};

template <class Word>
RowScan scan_unit(const Word* __restrict__ x, int32_t n, Word zero_mask, Word one_bits) {
  Word any = 0, bad = 0;
  for (int32_t i = 0; i < n; ++i) {
    const Word nonzero = x[i] & zero_mask;
    any |= nonzero;
    bad |= static_cast<Word>((nonzero != 0) & (x[i] != one_bits));
  }
  if (!any) return {n, 0, bad != 0};
  int32_t first = 0, last = n;
  while ((x[first] & zero_mask) == 0) ++first;
  while ((x[last - 1] & zero_mask) == 0) --last;
  return {first, last, bad != 0};
}

template <class Word>
RowScan scan_strided(const Word* x, int64_t stride, int32_t n, Word zero_mask, Word one_bits) {
  int32_t first = n, last = 0;
  bool bad = false;
  for (int32_t i = 0; i < n; ++i) {
    const Word w = x[i * stride];
    const bool nonzero = (w & zero_mask) != 0;
    bad |= nonzero & (w != one_bits);
    first = nonzero && i < first ? i : first;
    last = nonzero ? i + 1 : last;
  }
  return {first, last, bad};
}

RowScan scan(const MaskView& m, int64_t offset, int32_t n) {
  return dispatch_word(m.word_size, [&](auto tag) {
    using Word = decltype(tag);
    const Word* x = static_cast<const Word*>(m.data) + offset;
    const Word zm = static_cast<Word>(m.zero_mask), one = static_cast<Word>(m.one_bits);
    if (m.strides[4] == 1) return scan_unit<Word>(x, n, zm, one);
    return scan_strided<Word>(x, m.strides[4], n, zm, one);
  });
}

// Channels-last rows: 0/1 flags of n interleaved words; returns whether a value is neither 0 nor 1.
template <class Word>
bool flag_row(const Word* __restrict__ x, int64_t n, Word zero_mask, Word one_bits, uint8_t* __restrict__ flags) {
  Word bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Word nonzero = x[i] & zero_mask;
    bad |= static_cast<Word>((nonzero != 0) & (x[i] != one_bits));
    flags[i] = static_cast<uint8_t>(nonzero != 0);
  }
  return bad != 0;
}

// First and one-past-last x of every channel in a row of interleaved flags (flags[x * C + c]).
void interleaved_bounds(const uint8_t* __restrict__ flags, int64_t C, int32_t n, int32_t* __restrict__ first,
                        int32_t* __restrict__ last) {
  for (int64_t c = 0; c < C; ++c) {
    first[c] = n;
    last[c] = 0;
  }
  for (int32_t i = 0; i < n; ++i) {
    const uint8_t* f = flags + i * C;
    for (int64_t c = 0; c < C; ++c) {
      first[c] = std::min(first[c], f[c] ? i : n);
      last[c] = f[c] ? i + 1 : last[c];
    }
  }
}

struct PlaneBox {
  int32_t y0, y1, x0, x1;  // box of the plane's non-zeros (n1, 0, n2, 0 when none)
};

}  // namespace

void mask_boxes_cpu(const MaskView& p, const MaskView& g, int64_t B, int64_t C, const int64_t n[3], int64_t* boxes,
                    int64_t bad[2], int threads) {
  const int64_t n0 = n[0], n1 = n[1], n2 = n[2];
  const int64_t items = B * n0;  // (b, z) planes, every channel
  threads = resolve_threads(threads);
  if (items * C * n1 * n2 < (int64_t(1) << 18)) threads = 1;
  std::vector<PlaneBox> plane_box(static_cast<size_t>(B * C * n0));  // index (b * C + c) * n0 + z
  std::vector<int64_t> plane_bad(static_cast<size_t>(2 * items), 0);
  const MaskView* views[2] = {&p, &g};
  const bool channels_last[2] = {C > 1 && p.strides[1] == 1 && p.strides[4] == C,
                                 C > 1 && g.strides[1] == 1 && g.strides[4] == C};
  parallel_for(items, threads, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> flags(static_cast<size_t>(n2 * C));
    std::vector<int32_t> bounds(static_cast<size_t>(4 * C));  // channels-last: first, last of p; of g
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n0, z = item % n0;
      for (int64_t c = 0; c < C; ++c)
        plane_box[static_cast<size_t>((b * C + c) * n0 + z)] = {static_cast<int32_t>(n1), 0, static_cast<int32_t>(n2), 0};
      for (int64_t y = 0; y < n1; ++y) {
        for (int k = 0; k < 2; ++k) {  // channels-last masks: this row of every channel at once
          const MaskView& m = *views[k];
          if (!channels_last[k]) continue;
          const int64_t off = b * m.strides[0] + z * m.strides[2] + y * m.strides[3];
          const bool row_bad = dispatch_word(m.word_size, [&](auto tag) {
            using Word = decltype(tag);
            return flag_row<Word>(static_cast<const Word*>(m.data) + off, n2 * C, static_cast<Word>(m.zero_mask),
                                  static_cast<Word>(m.one_bits), flags.data());
          });
          plane_bad[static_cast<size_t>(2 * item + k)] += row_bad ? 1 : 0;
          interleaved_bounds(flags.data(), C, static_cast<int32_t>(n2), bounds.data() + 2 * k * C,
                             bounds.data() + (2 * k + 1) * C);
        }
        for (int64_t c = 0; c < C; ++c) {
          int32_t first = static_cast<int32_t>(n2), last = 0;
          for (int k = 0; k < 2; ++k) {
            RowScan r;
            if (channels_last[k]) {
              r = {bounds[static_cast<size_t>(2 * k * C + c)], bounds[static_cast<size_t>((2 * k + 1) * C + c)], false};
            } else {
              const MaskView& m = *views[k];
              r = scan(m, b * m.strides[0] + c * m.strides[1] + z * m.strides[2] + y * m.strides[3],
                       static_cast<int32_t>(n2));
              plane_bad[static_cast<size_t>(2 * item + k)] += r.bad ? 1 : 0;
            }
            first = std::min(first, r.first);
            last = std::max(last, r.last);
          }
          if (first < last) {
            PlaneBox& box = plane_box[static_cast<size_t>((b * C + c) * n0 + z)];
            box.y0 = std::min<int32_t>(box.y0, static_cast<int32_t>(y));
            box.y1 = static_cast<int32_t>(y + 1);
            box.x0 = std::min(box.x0, first);
            box.x1 = std::max(box.x1, last);
          }
        }
      }
    }
  });
  bad[0] = bad[1] = 0;
  for (int64_t item = 0; item < items; ++item) {
    bad[0] += plane_bad[static_cast<size_t>(2 * item)];
    bad[1] += plane_bad[static_cast<size_t>(2 * item + 1)];
  }
  for (int64_t bc = 0; bc < B * C; ++bc) {
    int64_t lo[3] = {n0, n1, n2}, hi[3] = {0, 0, 0};
    for (int64_t z = 0; z < n0; ++z) {
      const PlaneBox& box = plane_box[static_cast<size_t>(bc * n0 + z)];
      if (box.y0 >= box.y1) continue;
      lo[0] = std::min(lo[0], z);
      hi[0] = z + 1;
      lo[1] = std::min<int64_t>(lo[1], box.y0);
      hi[1] = std::max<int64_t>(hi[1], box.y1);
      lo[2] = std::min<int64_t>(lo[2], box.x0);
      hi[2] = std::max<int64_t>(hi[2], box.x1);
    }
    const bool empty = hi[0] == 0;
    for (int a = 0; a < 3; ++a) {
      boxes[bc * 6 + 2 * a] = empty ? 0 : lo[a];
      boxes[bc * 6 + 2 * a + 1] = empty ? 0 : hi[a];
    }
  }
}

}  // namespace fastloss
