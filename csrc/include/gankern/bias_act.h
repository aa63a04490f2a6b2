// Fused bias + activation: y = clamp(act(x + b) * gain, -clamp, clamp), its gradient op and the
// gradient op's own derivative (second order). The activation math lives here once, shared by
// the CPU and CUDA kernels, so both backends compute the same formulas.
//
// x is a dense tensor of `n` elements; the bias index of flat offset i is (i / inner) % channels
// (inner = x.stride(dim)), which holds for every dense layout, channels_last included. The bias
// is stored in the accumulation type (float for fp32/fp16/bf16 x, double for fp64).
// Modes: 0 forward (out = y), 1 gradient (out = dy * gain * act'(z) * mask),
// 2 second order (out = v * dy * gain * act''(z) * mask). Pointers arrive validated by
// gankern/_native.py.
#pragma once
#include <cstdint>
#include <math.h>

#include "gankern/common.h"

// The activation math must inline into every CPU loop that calls it, or the loop stays scalar
// (GCC declined to inline bias_act_point into the gradient loop that also sums db: 30x slower).
#if defined(__CUDACC__)
#define GK_ACT_INLINE GK_HD
#else
#define GK_ACT_INLINE inline __attribute__((always_inline))
#endif

namespace gankern {

// Must match gankern/ops/bias_act/reference.py:ACTS.
enum Act : int { kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kSilu, kSoftplus, kElu };

GK_HD float gk_exp(float v) { return ::expf(v); }
GK_HD double gk_exp(double v) { return ::exp(v); }
GK_HD float gk_expm1(float v) { return ::expm1f(v); }
GK_HD double gk_expm1(double v) { return ::expm1(v); }
GK_HD float gk_log1p(float v) { return ::log1pf(v); }
GK_HD double gk_log1p(double v) { return ::log1p(v); }
GK_HD float gk_tanh(float v) { return ::tanhf(v); }
GK_HD double gk_tanh(double v) { return ::tanh(v); }

// f(z), f'(z), f''(z) of one activation, branch-free (selects only) so CPU loops vectorize.
// Softplus follows torch (beta 1, linear above 20).
template <int ACT, typename A>
GK_ACT_INLINE void act_eval(A z, A alpha, A& f, A& d1, A& d2) {
  const bool pos = z > A(0);
  d2 = A(0);
  if (ACT == kLinear) {
    f = z; d1 = A(1);
  } else if (ACT == kRelu) {
    // !(z <= 0) rather than z > 0: NaN takes the first branch and stays NaN, as in torch.
    f = !(z <= A(0)) ? z : A(0); d1 = pos ? A(1) : A(0);
  } else if (ACT == kLrelu) {
    // max/min instead of a select: GCC keeps `pos ? z : z * alpha` as a branch (mispredicted
    // on random signs, 25x slower); this form is exact for both signs and vectorizes.
    const A zp = !(z <= A(0)) ? z : A(0), zn = z < A(0) ? z : A(0);  // NaN stays in zp
    f = zp + alpha * zn; d1 = pos ? A(1) : alpha;
  } else if (ACT == kTanh) {
    const A t = gk_tanh(z);
    f = t; d1 = A(1) - t * t; d2 = A(-2) * t * d1;
  } else if (ACT == kSigmoid) {
    const A s = A(1) / (A(1) + gk_exp(-z));
    f = s; d1 = s * (A(1) - s); d2 = d1 * (A(1) - A(2) * s);
  } else if (ACT == kSilu) {
    const A s = A(1) / (A(1) + gk_exp(-z)), ds = s * (A(1) - s);
    f = z * s; d1 = s + z * ds; d2 = ds * (A(2) + z * (A(1) - A(2) * s));
  } else if (ACT == kSoftplus) {
    const bool linear = z > A(20);
    const A s = A(1) / (A(1) + gk_exp(-z));
    const A sp = (pos ? z : A(0)) + gk_log1p(gk_exp(pos ? -z : z));
    f = linear ? z : sp; d1 = linear ? A(1) : s; d2 = linear ? A(0) : s * (A(1) - s);
  } else {  // kElu
    const A zn = pos ? A(0) : z;
    const A e = alpha * gk_exp(zn);
    f = pos ? z : alpha * gk_expm1(zn); d1 = pos ? A(1) : e; d2 = pos ? A(0) : e;
  }
}

// One element of any mode; `extra` is dy (mode 1) or v * dy (mode 2). Branch-free.
template <int ACT, int MODE, typename A>
GK_ACT_INLINE A bias_act_point(A z, A extra, A alpha, A gain, A clamp, bool has_clamp) {
  A f, d1, d2;
  act_eval<ACT, A>(z, alpha, f, d1, d2);
  const A u = f * gain;
  if (MODE == 0) {
    const A c = u > clamp ? clamp : (u < -clamp ? -clamp : u);
    return has_clamp ? c : u;
  }
  // torch.clamp passes the gradient where -clamp <= u <= clamp (inclusive).
  const A g = extra * gain * (MODE == 1 ? d1 : d2);
  const bool pass = !has_clamp || (u >= -clamp && u <= clamp);
  return pass ? g : A(0);
}

int bias_act_cpu(int mode, int act, const void* x, const void* bias, const void* dy, const void* v,
                 void* out, int64_t n, int64_t channels, int64_t inner, int dtype, double alpha,
                 double gain, double clamp, bool has_clamp);
// bias_act_cpu that, for mode 1 with a bias and a non-null db, also writes db (C values in the
// accumulation type) = dx summed over every axis but the channel's, in a thread-count-free order.
int bias_act_grad_db_cpu(int mode, int act, const void* x, const void* bias, const void* dy,
                         const void* v, void* out, void* db, int64_t n, int64_t channels,
                         int64_t inner, int dtype, double alpha, double gain, double clamp,
                         bool has_clamp);

}  // namespace gankern

extern "C" {
int gankern_bias_act_cuda(int mode, int act, const void* x, const void* bias, const void* dy,
                          const void* v, void* out, int64_t n, int64_t channels, int64_t inner,
                          int dtype, double alpha, double gain, double clamp, bool has_clamp,
                          void* stream);
}
