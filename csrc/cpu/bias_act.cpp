// CPU backend of gk.ops.bias_act: one pass, threads over (outer, channel) runs of `inner`
// elements so each run has one bias value and the inner loop vectorizes; when inner == 1
// (channels_last, Linear) the channel loop itself is the inner loop.
#include "gankern/bias_act.h"

namespace gankern {
namespace {

template <int ACT, int MODE, bool CLAMP, typename T>
void run(const T* __restrict x, const typename Acc<T>::type* __restrict bias, const T* __restrict dy,
         const T* __restrict v, T* __restrict out, int64_t n, int64_t C, int64_t inner,
         double alpha_d, double gain_d, double clamp_d) {
  using A = typename Acc<T>::type;
  const A alpha = A(alpha_d), gain = A(gain_d), clamp = A(clamp_d);
  // One element; CLAMP and MODE are compile-time, so after inlining the loops below are plain
  // arithmetic with selects, which the compiler vectorizes.
  auto one = [=](int64_t i, A b) -> T {
    A extra = A(0);
    if (MODE >= 1) extra = A(Convert<T>::load(dy[i]));
    if (MODE == 2) extra *= A(Convert<T>::load(v[i]));
    return Convert<T>::store(
        bias_act_point<ACT, MODE, A>(A(Convert<T>::load(x[i])) + b, extra, alpha, gain, clamp, CLAMP));
  };
  const bool big = n > 65536;
  if (inner == 1) {
    const int64_t outer = n / C;
#pragma omp parallel for schedule(static) if (big)
    for (int64_t o = 0; o < outer; ++o) {
      const int64_t base = o * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) out[base + c] = one(base + c, bias ? bias[c] : A(0));
    }
  } else {
    const int64_t runs = n / inner;
#pragma omp parallel for schedule(static) if (big)
    for (int64_t r = 0; r < runs; ++r) {
      const A b = bias ? bias[r % C] : A(0);
      const int64_t begin = r * inner;
#pragma omp simd
      for (int64_t k = begin; k < begin + inner; ++k) out[k] = one(k, b);
    }
  }
}

template <int ACT, typename T>
int by_mode(int mode, const void* x, const void* bias, const void* dy, const void* v, void* out,
            int64_t n, int64_t C, int64_t inner, double alpha, double gain, double clamp, bool hc) {
  using A = typename Acc<T>::type;
  auto X = static_cast<const T*>(x);
  auto B = static_cast<const A*>(bias);
  auto DY = static_cast<const T*>(dy);
  auto V = static_cast<const T*>(v);
  auto O = static_cast<T*>(out);
  // The clamp is a template flag so the common unclamped loop carries no clamp test.
  switch (mode * 2 + (hc ? 1 : 0)) {
    case 0: run<ACT, 0, false, T>(X, B, DY, V, O, n, C, inner, alpha, gain, clamp); return 0;
    case 1: run<ACT, 0, true, T>(X, B, DY, V, O, n, C, inner, alpha, gain, clamp); return 0;
    case 2: run<ACT, 1, false, T>(X, B, DY, V, O, n, C, inner, alpha, gain, clamp); return 0;
    case 3: run<ACT, 1, true, T>(X, B, DY, V, O, n, C, inner, alpha, gain, clamp); return 0;
    case 4: run<ACT, 2, false, T>(X, B, DY, V, O, n, C, inner, alpha, gain, clamp); return 0;
    case 5: run<ACT, 2, true, T>(X, B, DY, V, O, n, C, inner, alpha, gain, clamp); return 0;
  }
  return -1;
}

template <typename T>
int by_act(int mode, int act, const void* x, const void* bias, const void* dy, const void* v,
           void* out, int64_t n, int64_t C, int64_t inner, double alpha, double gain, double clamp,
           bool hc) {
  switch (act) {
    case kLinear: return by_mode<kLinear, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
    case kRelu: return by_mode<kRelu, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
    case kLrelu: return by_mode<kLrelu, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
    case kTanh: return by_mode<kTanh, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
    case kSigmoid: return by_mode<kSigmoid, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
    case kSilu: return by_mode<kSilu, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
    case kSoftplus: return by_mode<kSoftplus, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
    case kElu: return by_mode<kElu, T>(mode, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc);
  }
  return -1;
}

}  // namespace

int bias_act_cpu(int mode, int act, const void* x, const void* bias, const void* dy, const void* v,
                 void* out, int64_t n, int64_t C, int64_t inner, int dtype, double alpha,
                 double gain, double clamp, bool has_clamp) {
  switch (dtype) {
    case kFloat32: return by_act<float>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, has_clamp);
    case kFloat64: return by_act<double>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, has_clamp);
    case kFloat16: return by_act<half_bits>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, has_clamp);
    case kBFloat16: return by_act<bf16_bits>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, has_clamp);
  }
  return -1;
}

}  // namespace gankern
