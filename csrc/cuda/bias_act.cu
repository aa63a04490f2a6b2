// CUDA backend of gk.ops.bias_act: a grid-stride elementwise kernel, activation and mode as
// template parameters so each instantiation is branch-free; the math is shared with the CPU
// kernel through gankern/bias_act.h. Indices are 32-bit when the tensor allows (gankern/index32.h):
// the channel of every element is a divide and a modulo.
#include <cuda_runtime.h>

#include "gankern/bias_act.h"
#include "gankern/index32.h"
#include "gankern/launch.h"

namespace gankern {
namespace {

constexpr int kThreads = 256;

template <int ACT, int MODE, typename T, typename I>
__global__ void __launch_bounds__(kThreads) bias_act_kernel(
    const T* __restrict__ x, const typename Acc<T>::type* __restrict__ bias, const T* __restrict__ dy,
    const T* __restrict__ v, T* __restrict__ out, I n, I C, I inner, double alpha_d,
    double gain_d, double clamp_d, bool has_clamp) {
  using A = typename Acc<T>::type;
  const A alpha = A(alpha_d), gain = A(gain_d), clamp = A(clamp_d);
  for (I i = I(blockIdx.x) * kThreads + threadIdx.x; i < n; i += I(gridDim.x) * kThreads) {
    const A b = bias ? bias[(i / inner) % C] : A(0);
    A extra = A(0);
    if (MODE >= 1) extra = A(Convert<T>::load(dy[i]));
    if (MODE == 2) extra *= A(Convert<T>::load(v[i]));
    out[i] = Convert<T>::store(
        bias_act_point<ACT, MODE, A>(A(Convert<T>::load(x[i])) + b, extra, alpha, gain, clamp, has_clamp));
  }
}

template <int ACT, int MODE, typename T>
int launch(const void* x, const void* bias, const void* dy, const void* v, void* out, int64_t n,
           int64_t C, int64_t inner, double alpha, double gain, double clamp, bool hc, cudaStream_t s) {
  using A = typename Acc<T>::type;
  int64_t blocks = (n + kThreads - 1) / kThreads;
  blocks = blocks > 65536 ? 65536 : (blocks < 1 ? 1 : blocks);
  if (fits_index32(n)) {
    launch_kernel(bias_act_kernel<ACT, MODE, T, uint32_t>, unsigned(blocks), kThreads, 0, s,
        static_cast<const T*>(x), static_cast<const A*>(bias), static_cast<const T*>(dy),
        static_cast<const T*>(v), static_cast<T*>(out), uint32_t(n), uint32_t(C), uint32_t(inner), alpha, gain,
        clamp, hc);
  } else {
    launch_kernel(bias_act_kernel<ACT, MODE, T, int64_t>, unsigned(blocks), kThreads, 0, s,
        static_cast<const T*>(x), static_cast<const A*>(bias), static_cast<const T*>(dy),
        static_cast<const T*>(v), static_cast<T*>(out), n, C, inner, alpha, gain, clamp, hc);
  }
  return int(cudaGetLastError());
}

template <int ACT, typename T>
int by_mode(int mode, const void* x, const void* b, const void* dy, const void* v, void* out, int64_t n,
            int64_t C, int64_t inner, double alpha, double gain, double clamp, bool hc, cudaStream_t s) {
  switch (mode) {
    case 0: return launch<ACT, 0, T>(x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case 1: return launch<ACT, 1, T>(x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case 2: return launch<ACT, 2, T>(x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
  }
  return -1;
}

template <typename T>
int by_act(int mode, int act, const void* x, const void* b, const void* dy, const void* v, void* out,
           int64_t n, int64_t C, int64_t inner, double alpha, double gain, double clamp, bool hc,
           cudaStream_t s) {
  switch (act) {
    case kLinear: return by_mode<kLinear, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kRelu: return by_mode<kRelu, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kLrelu: return by_mode<kLrelu, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kTanh: return by_mode<kTanh, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kSigmoid: return by_mode<kSigmoid, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kSilu: return by_mode<kSilu, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kSoftplus: return by_mode<kSoftplus, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kElu: return by_mode<kElu, T>(mode, x, b, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
  }
  return -1;
}

}  // namespace
}  // namespace gankern

using namespace gankern;

extern "C" int gankern_bias_act_cuda(int mode, int act, const void* x, const void* bias, const void* dy,
                                     const void* v, void* out, int64_t n, int64_t C, int64_t inner,
                                     int dtype, double alpha, double gain, double clamp, bool hc,
                                     void* stream_ptr) {
  cudaStream_t s = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case kFloat32: return by_act<float>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kFloat64: return by_act<double>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kFloat16: return by_act<half_bits>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
    case kBFloat16: return by_act<bf16_bits>(mode, act, x, bias, dy, v, out, n, C, inner, alpha, gain, clamp, hc, s);
  }
  return -1;
}
