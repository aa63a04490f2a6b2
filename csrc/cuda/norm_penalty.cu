// CUDA backend of gk.ops.norm_penalty. Forward: one block per sample reduces its row (vector
// of partial sums, warp shuffles, then shared memory), then one block reduces the B norms to the
// penalty in a fixed order (deterministic, no atomics). Backward: a grid-stride scaled copy
// with the per-row coefficient recomputed from the saved norm.
#include <cuda_runtime.h>

#include "gankern/common.h"
#include "gankern/norm_penalty.h"
#include "gankern/launch.h"

namespace gankern {
namespace {

constexpr int kThreads = 256;

template <typename A>
__device__ A block_sum(A v) {
  __shared__ A partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : A(0);
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) row_norm_kernel(const T* __restrict__ g,
                                                            typename Acc<T>::type* __restrict__ norms,
                                                            int64_t N) {
  using A = typename Acc<T>::type;
  const T* row = g + int64_t(blockIdx.x) * N;
  A acc = A(0);
  for (int64_t j = threadIdx.x; j < N; j += kThreads) {
    const A v = A(Convert<T>::load(row[j]));
    acc += v * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) norms[blockIdx.x] = sqrt(acc);
}

template <typename A>
__global__ void __launch_bounds__(kThreads) penalty_kernel(const A* __restrict__ norms, A* penalty,
                                                           int64_t B, double center, double weight) {
  A acc = A(0);
  for (int64_t i = threadIdx.x; i < B; i += kThreads) {
    const A d = norms[i] - A(center);
    acc += d * d;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) *penalty = A(double(acc) * weight / double(B));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(const typename Acc<T>::type* gp,
                                                            const typename Acc<T>::type* gn,
                                                            const T* __restrict__ g,
                                                            const typename Acc<T>::type* norms,
                                                            T* __restrict__ out, int64_t B, int64_t N,
                                                            double center, double weight) {
  using A = typename Acc<T>::type;
  const int64_t row = blockIdx.y;
  const A n = norms[row];
  const A inv = n > A(0) ? A(1) / n : A(0);  // zero row: gradient 0, never NaN
  const A s = A(double(*gp) * 2.0 * weight / double(B));
  const A coef = s + inv * (gn[row] - s * A(center));
  const T* in = g + row * N;
  T* o = out + row * N;
  for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < N; j += int64_t(gridDim.x) * kThreads)
    o[j] = Convert<T>::store(A(Convert<T>::load(in[j])) * coef);
}

template <typename T>
int forward(const void* g, void* norms, void* penalty, int64_t B, int64_t N, double c, double w,
            cudaStream_t stream) {
  using A = typename Acc<T>::type;
  launch_kernel(row_norm_kernel<T>, unsigned(B), kThreads, 0, stream, static_cast<const T*>(g), static_cast<A*>(norms), N);
  launch_kernel(penalty_kernel<A>, 1, kThreads, 0, stream, static_cast<const A*>(norms), static_cast<A*>(penalty), B, c, w);
  return int(cudaGetLastError());
}

template <typename T>
int backward(const void* gp, const void* gn, const void* g, const void* norms, void* out, int64_t B,
             int64_t N, double c, double w, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  int64_t x = (N + kThreads * 4 - 1) / (kThreads * 4);
  dim3 grid(unsigned(x < 1 ? 1 : (x > 65535 ? 65535 : x)), unsigned(B));
  launch_kernel(backward_kernel<T>, grid, kThreads, 0, stream, static_cast<const A*>(gp), static_cast<const A*>(gn),
                                                    static_cast<const T*>(g), static_cast<const A*>(norms),
                                                    static_cast<T*>(out), B, N, c, w);
  return int(cudaGetLastError());
}

}  // namespace
}  // namespace gankern

using namespace gankern;

extern "C" int gankern_norm_penalty_cuda(const void* g, void* norms, void* penalty, int64_t B, int64_t N,
                                         int dtype, double c, double w, void* stream_ptr) {
  cudaStream_t s = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case kFloat32: return forward<float>(g, norms, penalty, B, N, c, w, s);
    case kFloat64: return forward<double>(g, norms, penalty, B, N, c, w, s);
    case kFloat16: return forward<half_bits>(g, norms, penalty, B, N, c, w, s);
    case kBFloat16: return forward<bf16_bits>(g, norms, penalty, B, N, c, w, s);
  }
  return -1;
}

extern "C" int gankern_norm_penalty_backward_cuda(const void* gp, const void* gn, const void* g,
                                                  const void* norms, void* out, int64_t B, int64_t N,
                                                  int dtype, double c, double w, void* stream_ptr) {
  cudaStream_t s = static_cast<cudaStream_t>(stream_ptr);
  if (B > 65535) return int(cudaErrorInvalidValue);  // gridDim.y limit
  switch (dtype) {
    case kFloat32: return backward<float>(gp, gn, g, norms, out, B, N, c, w, s);
    case kFloat64: return backward<double>(gp, gn, g, norms, out, B, N, c, w, s);
    case kFloat16: return backward<half_bits>(gp, gn, g, norms, out, B, N, c, w, s);
    case kBFloat16: return backward<bf16_bits>(gp, gn, g, norms, out, B, N, c, w, s);
  }
  return -1;
}
