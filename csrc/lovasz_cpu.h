// Lovász extension of the Jaccard loss on the CPU (fastloss/ops/lovasz.py's semantics, Berman et al.):
// per row, the errors sorted in decreasing order by an LSD radix sort on their bits (ignored elements
// last), then one pass in that order forms the Jaccard losses J_i, their differences d_i (the
// subgradient) and the row's loss Σ_i m_πi·d_i. d is written back in the elements' own order (0 for
// ignored elements), so the backward is dL/dm = upstream_r·d.
#pragma once

#include <cstdint>

namespace fastloss {

// errors, fg: (R, P) contiguous, float32 (elem 4) or float64 (elem 8); valid: (R, P) uint8 or nullptr
// (all counted). loss: (R,) and d: (R, P) of the same float type. Rows are spread over `threads`
// threads; each row's result does not depend on their number.
void lovasz_cpu(const void* errors, const void* fg, const uint8_t* valid, int64_t R, int64_t P, int elem,
                void* loss, void* d, int threads);

}  // namespace fastloss
