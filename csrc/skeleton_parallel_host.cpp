// The parallel thinning (fastloss.skeletonize(..., method="parallel")) on the CPU: exactly the passes of
// skeleton_cuda.cu, with the same per-voxel functions (skeleton_parallel.h), so that a machine without a GPU
// computes, and CI checks, the GPU's answer.
//
// 2D: Zhang-Suen iterations of two sub-passes, each reading the image as it was when it began (`src`) and
// writing the result to the other buffer; the iterations stop when neither sub-pass deleted a pixel. This is
// scikit-image's algorithm itself, so the skeleton is scikit-image's.
//
// 3D: sweeps over the border directions (6; 4 for a volume one voxel deep). Per direction, Lee's candidates of
// the image as the pass begins are marked (border voxels of the direction, no end points: one layer per
// direction and sweep, as the sequential algorithm collects them); then the 8 parity subfields (p % 2, r % 2,
// c % 2) are visited in a fixed order, and every candidate of the subfield that is Euler invariant and simple in
// the image as it is then is deleted, in place. (Lee's sequential re-check tests simplicity only, which lets it
// delete a voxel left without neighbours, a whole small component; the Euler test here forbids that.) Two voxels
// of one // subfield are never 26-neighbours, so each decision reads none of the voxels its pass deletes: the order of
// the voxels inside a pass does not matter (the GPU runs them all at once) and every deletion is of a simple
// point of the image as it is (topology preserved). Sweeps repeat until one deletes nothing.
//
// A batch item's passes read and write that item only, and a converged item is left unchanged by more sweeps,
// so the items thinned one by one here equal the batch thinned together on the GPU. Threads run over items.
#include <stdexcept>
#include <string>
#include <vector>

#include "parallel.h"
#include "skeleton_parallel.h"

namespace fastloss {
namespace {

void zhang_parallel_one(const uint8_t* mask, uint8_t* out, int64_t H, int64_t W, const uint8_t* table) {
  const int64_t n = H * W;
  for (int64_t i = 0; i < n; ++i) out[i] = mask[i] != 0;
  std::vector<uint8_t> other(static_cast<size_t>(n));
  uint8_t* tmp = other.data();
  for (;;) {
    bool changed = false;
    for (int64_t r = 0; r < H; ++r)  // sub-pass 1: out -> tmp
      for (int64_t c = 0; c < W; ++c) {
        const uint8_t v = skel::zhang_after(out, H, W, r, c, 1, table);
        changed |= v != out[r * W + c];
        tmp[r * W + c] = v;
      }
    for (int64_t r = 0; r < H; ++r)  // sub-pass 2: tmp -> out
      for (int64_t c = 0; c < W; ++c) {
        const uint8_t v = skel::zhang_after(tmp, H, W, r, c, 2, table);
        changed |= v != tmp[r * W + c];
        out[r * W + c] = v;
      }
    if (!changed) return;
  }
}

// The GPU visits every voxel of a pass; here each pass visits the object voxels only (kept in a list, the
// deleted ones dropped after each sweep) and the subfields are buckets of the direction's candidates: the same
// candidates and, inside a subfield, order-independent decisions, so the same image after every pass.
void lee_parallel_one(const uint8_t* mask, uint8_t* out, int64_t D, int64_t H, int64_t W, const int8_t* delta) {
  const int64_t n = D * H * W;
  std::vector<int64_t> alive;  // the object voxels, C order
  for (int64_t i = 0; i < n; ++i) {
    out[i] = mask[i] != 0;
    if (out[i]) alive.push_back(i);
  }
  std::vector<int64_t> bucket[8];  // the direction's candidates by parity subfield (p % 2 << 2 | r % 2 << 1 | c % 2)
  const int directions = skel::num_directions(D);
  for (;;) {
    bool changed = false;
    for (int direction = 0; direction < directions; ++direction) {
      for (auto& v : bucket) v.clear();
      for (const int64_t i : alive) {  // the candidates of the image as the direction's pass begins
        const int64_t p = i / (H * W), r = (i / W) % H, c = i % W;
        if (out[i] && skel::is_candidate(out, D, H, W, p, r, c, direction))
          bucket[((p & 1) << 2) | ((r & 1) << 1) | (c & 1)].push_back(i);
      }
      for (const auto& v : bucket)  // the subfields in order 0..7, each deleted at once
        for (const int64_t i : v)
          if (skel::lee_deletable(out, D, H, W, i / (H * W), (i / W) % H, i % W, delta)) {
            out[i] = 0;
            changed = true;
          }
    }
    if (!changed) return;
    size_t k = 0;
    for (const int64_t i : alive)
      if (out[i]) alive[k++] = i;
    alive.resize(k);
  }
}

}  // namespace

void skeletonize_parallel_host(const uint8_t* mask, uint8_t* out, int64_t batch, const std::vector<int64_t>& shape,
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
  static const skel::Tables tables = skel::make_tables();
  const int t = resolve_threads(threads);
  parallel_for(batch, t, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (shape.size() == 2)
        zhang_parallel_one(mask + b * n, out + b * n, shape[0], shape[1], tables.zhang);
      else
        lee_parallel_one(mask + b * n, out + b * n, shape[0], shape[1], shape[2], tables.euler_delta);
    }
  });
}

}  // namespace fastloss
