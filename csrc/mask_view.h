// A (B, C, n0, n1, n2) mask of any real dtype, read as raw words (CPU), for the surface metrics' helpers
// (mask_boxes_cpu.cpp, mask_border_cpu.cpp).
//
// Element (b, c, z, y, x) lives at data + word_size * (b*s[0] + c*s[1] + z*s[2] + y*s[3] + x*s[4]) (strides in
// elements, any order). A value is zero when (bits & zero_mask) == 0 and one when bits == one_bits: for
// floats zero_mask drops the sign bit (so -0.0 is zero and NaN is not) and one_bits is the pattern of 1.0;
// for integers zero_mask is all ones and one_bits is 1.
#pragma once

#include <cstdint>
#include <stdexcept>

namespace fastloss {

struct MaskView {
  const void* data;
  int64_t word_size;  // 1, 2, 4 or 8
  uint64_t zero_mask, one_bits;
  int64_t strides[5];
};

// Calls fn(tag) with a value of the unsigned word type of `word_size` bytes (for template dispatch).
template <class Fn>
auto dispatch_word(int64_t word_size, Fn fn) {
  switch (word_size) {
    case 1:
      return fn(uint8_t{});
    case 2:
      return fn(uint16_t{});
    case 4:
      return fn(uint32_t{});
    case 8:
      return fn(uint64_t{});
    default:
      throw std::invalid_argument("mask word size must be 1, 2, 4 or 8");
  }
}

}  // namespace fastloss
