// Elementwise math for the CPU loss kernels (stats_cpu.cpp, voxel_ce_cpu.cpp), written so that GCC and
// Clang vectorise the loops that call it: no calls into libm, no branches, only arithmetic, bit casts
// and compare-selects. A compare-select blocks vectorisation under the default -ftrapping-math, so the
// files that include this are built with -fno-trapping-math (IEEE semantics otherwise kept: infinities,
// NaNs and rounding behave as written; never -ffast-math, which would drop them).
//
// float: polynomial exp/log with ~1 ulp error on the ranges the kernels use; double: the libm functions
// (the float64 path exists for gradcheck, where exactness matters more than speed).
//
// half / bfloat16 <-> float conversions by bit manipulation, round-to-nearest-even, NaN and infinity
// preserved, subnormals exact: the kernels read and write float16/bfloat16 tensors in place.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__GNUC__)
#define FL_INLINE inline __attribute__((always_inline))
#else
#define FL_INLINE inline
#endif

namespace fastloss {
namespace cpu_math {
// Internal linkage for everything here: this header is compiled into one translation unit per
// instruction set (stats_cpu_*.cpp), and the linker must never pick one ISA's copy for another.
namespace {

FL_INLINE uint32_t f2u(float f) {
#if defined(__GNUC__)
  return __builtin_bit_cast(uint32_t, f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
FL_INLINE float u2f(uint32_t u) {
#if defined(__GNUC__)
  return __builtin_bit_cast(float, u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// ---------------------------------------------------------------------------------------------- float
// e^x = 2^n · e^r with n = round(x·log2 e) and r = x − n·ln 2 ∈ [−ln2/2, ln2/2] (ln 2 split in two parts
// so that n·ln2_hi is exact); e^r by a degree-7 polynomial (Taylor coefficients with the last two tuned
// to the interval, the classic single-precision choice); 2^n built in the exponent field. n is rounded
// with the 1.5·2^23 trick (round-to-nearest-even without a conversion instruction). For x already
// clamped to [−87.3, 88.37], where 2^n is a normal float; a NaN propagates through the arithmetic.
FL_INLINE float exp_clamped_f(float xc) {
  const float magic = 12582912.0f;  // 1.5·2^23
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  const int32_t ni = static_cast<int32_t>(f2u(t)) - static_cast<int32_t>(f2u(magic));
  float r = xc - n * 0.693359375f;  // ln2_hi (8 significant bits: n·ln2_hi exact for |n| < 2^16)
  r = r - n * -2.12194440e-4f;      // ln2_lo
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * u2f(static_cast<uint32_t>(ni + 127) << 23);
}

constexpr float kExpLo = -87.33654f, kExpHi = 88.3762626647949f;

// e^x: below −87.3 (where 2^n would be subnormal) 0, above 88.37 +inf, NaN stays NaN.
FL_INLINE float exp_f(float x) {
  float xc = x < kExpLo ? kExpLo : x;
  xc = xc > kExpHi ? kExpHi : xc;
  float y = exp_clamped_f(xc);
  y = x > kExpHi ? std::numeric_limits<float>::infinity() : y;
  y = x < kExpLo ? 0.0f : y;
  return x != x ? x : y;
}

// e^x for x ≤ 0 (or NaN), as the softmax (x − max) and the sigmoid (−|x|) need it: no overflow branch.
FL_INLINE float exp_nonpos_f(float x) {
  const float y = exp_clamped_f(x < kExpLo ? kExpLo : x);
  return x < kExpLo ? 0.0f : y;
}

// log x = e·ln 2 + log m with x = m·2^e, m ∈ [√½, √2): z = m − 1 ∈ [−0.29, 0.41], log(1 + z) =
// z − z²/2 + z³·P(z) with a degree-8 polynomial P (the classic single-precision coefficients). Subnormal
// x is scaled by 2^23 first; log 0 = −inf, log of a negative number NaN, log inf = inf, NaN stays NaN.
FL_INLINE float log_f(float x) {
  const bool sub = x < 1.17549435e-38f;  // also true for 0 and negatives (fixed below)
  const float xs = sub ? x * 8388608.0f : x;
  const uint32_t bits = f2u(xs);
  float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xffu) - 126) - (sub ? 23.0f : 0.0f);
  float m = u2f((bits & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  const float z = small ? m + m - 1.0f : m - 1.0f;
  const float z2 = z * z;
  float p = 7.0376836292e-2f;
  p = p * z - 1.1514610310e-1f;
  p = p * z + 1.1676998740e-1f;
  p = p * z - 1.2420140846e-1f;
  p = p * z + 1.4249322787e-1f;
  p = p * z - 1.6668057665e-1f;
  p = p * z + 2.0000714765e-1f;
  p = p * z - 2.4999993993e-1f;
  p = p * z + 3.3333331174e-1f;
  float y = p * z * z2;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z2;
  y = z + y;
  y = y + e * 0.693359375f;
  y = x == std::numeric_limits<float>::infinity() ? x : y;
  y = x == 0.0f ? -std::numeric_limits<float>::infinity() : y;
  y = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : y;
  y = x != x ? x : y;
  return y;
}

// log(1 + z) for z ≥ 0 accurate when z is tiny: log(u)·z/(u − 1) with u = 1 + z rounded (Goldberg);
// when u rounds to 1, log1p(z) = z to working precision.
FL_INLINE float log1p_f(float z) {
  const float u = 1.0f + z;
  const float um1 = u - 1.0f;
  const float safe = um1 == 0.0f ? 1.0f : um1;
  const float y = log_f(u) * (z / safe);
  return um1 == 0.0f ? z : y;
}

// ---------------------------------------------------------------------------------------------- generic
FL_INLINE float vexp(float x) { return exp_f(x); }
FL_INLINE float vlog(float x) { return log_f(x); }
FL_INLINE float vlog1p(float x) { return log1p_f(x); }
FL_INLINE double vexp(double x) { return std::exp(x); }
FL_INLINE float vexp_nonpos(float x) { return exp_nonpos_f(x); }
FL_INLINE double vexp_nonpos(double x) { return std::exp(x); }
FL_INLINE double vlog(double x) { return std::log(x); }
FL_INLINE double vlog1p(double x) { return std::log1p(x); }

template <class S>
FL_INLINE S vmin(S a, S b) { return b < a ? b : a; }
template <class S>
FL_INLINE S vmax(S a, S b) { return a < b ? b : a; }
template <class S>
FL_INLINE S vabs(S a) { return a < S(0) ? -a : a; }
template <class S>
FL_INLINE S vsign(S d) { return d > S(0) ? S(1) : (d < S(0) ? S(-1) : S(0)); }

// base^e for base ≥ 0 and a run-time exponent, as torch.pow: 0^e = 0 for e > 0, x^0 = 1; the common
// exponents without exp/log.
template <class S>
FL_INLINE S vpow_pos(S base, S e) {
  if (e == S(0)) return S(1);
  if (e == S(1)) return base;
  if (e == S(2)) return base * base;
  const S safe = base > S(0) ? base : S(1);
  const S y = vexp(e * vlog(safe));
  return base > S(0) ? y : S(0);
}

// --------------------------------------------------------------------------------------- half / bfloat16
FL_INLINE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  // normal: rebias 15 -> 127; subnormal: mant·2^−24 exactly (a float multiply of a small integer)
  const uint32_t normal = sign | ((exp + 112u) << 23) | (mant << 13);
  const uint32_t special = sign | 0x7f800000u | (mant << 13);  // inf / NaN (payload kept)
  const float subn = static_cast<float>(mant) * 5.9604644775390625e-8f;
  const uint32_t sub_bits = sign | f2u(subn);
  return u2f(exp == 0x1fu ? special : (exp == 0u ? sub_bits : normal));
}

// float -> half, round to nearest even. Normal range: add the rounding bias to the bits and shift;
// below 2^−14 the value is added to 0.5 (whose ulp is 2^−24, the half subnormal step) so that the FPU
// rounds it, and the mantissa bits are read back. Overflow -> inf; NaN -> quiet NaN.
FL_INLINE uint16_t float_to_half(float f) {
  const uint32_t u = f2u(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  uint32_t h;
  if (a >= 0x7f800000u) {
    h = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (a >= 0x477ff000u) {  // ≥ 65520: rounds to inf
    h = 0x7c00u;
  } else if (a < 0x38800000u) {  // < 2^−14: subnormal half (or 0)
    const float v = u2f(a) + 0.5f;
    h = f2u(v) - 0x3f000000u;
  } else {
    const uint32_t odd = (a >> 13) & 1u;
    h = (a + 0xc8000fffu + odd) >> 13;  // rebias 127 -> 15 (−112 << 23 = 0xc8000000) and round
  }
  return static_cast<uint16_t>(sign | h);
}

FL_INLINE float bf16_to_float(uint16_t b) { return u2f(static_cast<uint32_t>(b) << 16); }

FL_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t odd = (u >> 16) & 1u;
  return static_cast<uint16_t>((u + 0x7fffu + odd) >> 16);
}

}  // namespace
}  // namespace cpu_math
}  // namespace fastloss
