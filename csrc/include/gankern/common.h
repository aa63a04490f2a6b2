// Shared by every gankern kernel: the dtype codes Python passes in, float conversions for the
// 16-bit types (csrc/ is torch-free, so no c10::Half / c10::BFloat16), and host/device markers.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GK_HD __host__ __device__ __forceinline__
#else
#define GK_HD inline
#endif

namespace gankern {

// CPU kernels start OpenMP threads only for at least this many elements (torch's grain is
// 32K). Waking a team costs 10-50 us on an idle 2-core machine but tens of milliseconds on an
// overloaded one (measured: 24 ms per region at load 6), so the bar sits where an idle machine
// gains (EMA over an SNGAN-32 G: 2.86 ms serial -> 2.36 ms threaded) and tiny updates stay serial.
constexpr int64_t kParallelMinElements = int64_t(1) << 18;

// The per-call kernels of a training step (bias_act, norm_penalty, spectral norm) go parallel
// from torch's own grain (at::internal::GRAIN_SIZE, 32K elements), as torch's elementwise ops
// beside them do: below it one thread does the pass, as waking the team costs more.
constexpr int64_t kParallelGrain = int64_t(1) << 15;

// Must match gankern/_native.py:DTYPE_CODES.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

struct half_bits { uint16_t x; };
struct bf16_bits { uint16_t x; };

GK_HD float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
GK_HD uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// bfloat16 is the top half of a float32; round to nearest even, keep NaN a NaN.
GK_HD float to_float(bf16_bits v) { return bits_to_float(uint32_t(v.x) << 16); }
GK_HD bf16_bits bf16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_bits{uint16_t((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_bits{uint16_t(u >> 16)};
}

// IEEE binary16 <-> binary32, round to nearest even, subnormals and NaN/Inf handled.
GK_HD float to_float(half_bits h) {
  uint32_t sign = uint32_t(h.x & 0x8000u) << 16, exp = (h.x >> 10) & 0x1fu, man = h.x & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    float f = float(man) * (1.0f / 16777216.0f);  // man * 2^-24
    return sign ? -f : f;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}
GK_HD half_bits half_from_float(float f) {
  uint32_t u = float_to_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return half_bits{uint16_t(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return half_bits{uint16_t(sign | 0x7c00u)};  // overflow -> Inf
  if (a < 0x38800000u) {                                               // subnormal or zero
    float mag = bits_to_float(a) * 16777216.0f;                       // in units of 2^-24
    uint32_t m = uint32_t(mag), rem_gt_half;
    float frac = mag - float(m);
    rem_gt_half = frac > 0.5f || (frac == 0.5f && (m & 1u));
    return half_bits{uint16_t(sign | (m + rem_gt_half))};
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return half_bits{uint16_t(sign | (r >> 13))};
}

template <typename T> struct Convert;
template <> struct Convert<float> {
  static GK_HD float load(float v) { return v; }
  static GK_HD float store(float v) { return v; }
};
template <> struct Convert<double> {
  static GK_HD double load(double v) { return v; }
  static GK_HD double store(double v) { return v; }
};
template <> struct Convert<half_bits> {
  static GK_HD float load(half_bits v) { return to_float(v); }
  static GK_HD half_bits store(float v) { return half_from_float(v); }
};
template <> struct Convert<bf16_bits> {
  static GK_HD float load(bf16_bits v) { return to_float(v); }
  static GK_HD bf16_bits store(float v) { return bf16_from_float(v); }
};

// The arithmetic type of a storage type: fp32 for 16-bit storage, itself otherwise.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

}  // namespace gankern
