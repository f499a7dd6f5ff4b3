// Skeletons of binary masks on the CPU (fastloss.skeletonize), equal voxel for voxel to scikit-image 0.26's
// skimage.morphology.skeletonize: its Zhang-Suen table thinning in 2D, Lee et al. 1994 thinning in 3D.
#pragma once

#include <cstdint>
#include <vector>

namespace fastloss {

// `batch` contiguous uint8 masks of `shape` (2 sizes: Zhang-Suen; 3 sizes: Lee), non-zero = foreground, into
// contiguous uint8 `out` (0/1) of the same layout. `out` may not alias `mask`. Threads over batch items.
void skeletonize_cpu(const uint8_t* mask, uint8_t* out, int64_t batch, const std::vector<int64_t>& shape,
                     int threads);

}  // namespace fastloss
