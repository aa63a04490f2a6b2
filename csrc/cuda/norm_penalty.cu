// CUDA backend of gk.ops.norm_penalty. Forward: one block per sample reduces its row (vector
// of partial sums, warp shuffles, then shared memory), then one block reduces the B norms to the
// penalty in a fixed order (deterministic, no atomics). A small batch of long rows would leave
// most SMs idle, so its rows are cut into slices: a (slices x rows) grid writes double partial
// sums to a workspace, and one block per row adds them in slice order (still deterministic). Backward: a grid-stride scaled copy
// with the per-row coefficient recomputed from the saved norm. Sums of squares and coefficients
// in double, with the CPU kernel's safe formulas for denormal and huge rows (issue 13).
#include <cuda_runtime.h>

#include "gankern/common.h"
#include "gankern/norm_penalty.h"
#include "gankern/launch.h"

namespace gankern {
namespace {

constexpr int kThreads = 256;

// A float64 row whose sum of squares leaves double's range is summed again scaled by 2^-600
// (huge) or 2^600 (tiny), as on the CPU: exact, a power of two only moves exponents. Narrower
// types never need it: their squares (2^-298 .. 2^256) are normal doubles.
constexpr double kScaleUp = 0x1p600, kScaleDown = 0x1p-600, kTinySumsq = 0x1p-900;
constexpr double kDoubleMax = 1.7976931348623157e308;

// The normal range of the accumulator type A (the saved norms' dtype).
template <typename A> struct Range;
template <> struct Range<float> {
  static constexpr double lo = 1.17549435082228750797e-38, hi = 3.40282346638528859812e38;
};
template <> struct Range<double> {
  static constexpr double lo = 2.2250738585072013831e-308, hi = kDoubleMax;
};

// The block's total (or max), returned to every thread. The trailing barrier lets the block call
// it again at once: no thread rewrites `partial` before every thread has read `total`.
struct Sum { __device__ static double apply(double a, double b) { return a + b; } };
struct Max { __device__ static double apply(double a, double b) { return a > b ? a : b; } };

template <typename Op>
__device__ double block_reduce_all(double v) {
  __shared__ double partial[kThreads / 32];
  __shared__ double total;
  for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_down_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    double w = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : 0.0;  // 0 is neutral for both
    for (int o = 16; o > 0; o >>= 1) w = Op::apply(w, __shfl_down_sync(0xffffffffu, w, o));
    if (threadIdx.x == 0) total = w;
  }
  __syncthreads();
  const double t = total;
  __syncthreads();
  return t;
}

template <typename T>
__device__ double row_sumsq(const T* row, int64_t N, double scale) {
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < N; j += kThreads) {
    const double v = double(Convert<T>::load(row[j])) * scale;
    acc += v * v;
  }
  return block_reduce_all<Sum>(acc);
}

// The row's norm from its plain sum of squares `total` (the same value in every thread of the
// block); a float64 row out of double's range is summed again, whole, by the block, rescaled.
template <typename T>
__device__ void finish_norm(const T* row, int64_t N, double total, typename Acc<T>::type* norm) {
  using A = typename Acc<T>::type;
  double n = sqrt(total);
  if (sizeof(T) == sizeof(double)) {  // the same total in every thread: the branch is uniform
    if (total > kDoubleMax) n = sqrt(row_sumsq(row, N, kScaleDown)) * kScaleUp;
    else if (total < kTinySumsq) n = sqrt(row_sumsq(row, N, kScaleUp)) * kScaleDown;
  }
  if (threadIdx.x == 0) *norm = A(n);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) row_norm_kernel(const T* __restrict__ g,
                                                            typename Acc<T>::type* __restrict__ norms,
                                                            int64_t N) {
  const T* row = g + int64_t(blockIdx.x) * N;
  // Squares summed in double whatever T is (float32 squares under/overflow from ~1e-19/1e19).
  finish_norm(row, N, row_sumsq(row, N, 1.0), norms + blockIdx.x);
}

// Small batches: block (x, y) sums the squares of slice x of row y, elements
// [x * chunk, min(N, (x + 1) * chunk)), in double, into parts[y * gridDim.x + x].
template <typename T>
__global__ void __launch_bounds__(kThreads) row_part_kernel(const T* __restrict__ g, double* __restrict__ parts,
                                                            int64_t N, int64_t chunk) {
  const T* row = g + int64_t(blockIdx.y) * N;
  const int64_t lo = int64_t(blockIdx.x) * chunk, hi = lo + chunk < N ? lo + chunk : N;
  double acc = 0.0;
  for (int64_t j = lo + threadIdx.x; j < hi; j += kThreads) {
    const double v = double(Convert<T>::load(row[j]));
    acc += v * v;
  }
  acc = block_reduce_all<Sum>(acc);
  if (threadIdx.x == 0) parts[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = acc;
}

// One block per row: its slices' partial sums added in slice order by every thread (a few dozen
// cached reads, the same total everywhere), then the norm as in row_norm_kernel.
template <typename T>
__global__ void __launch_bounds__(kThreads) row_norm_from_parts_kernel(const T* __restrict__ g,
                                                                       const double* __restrict__ parts,
                                                                       typename Acc<T>::type* __restrict__ norms,
                                                                       int64_t N, int slices) {
  const double* mine = parts + int64_t(blockIdx.x) * slices;
  double total = 0.0;
  for (int k = 0; k < slices; ++k) total += mine[k];
  finish_norm(g + int64_t(blockIdx.x) * N, N, total, norms + blockIdx.x);
}

// weight * mean((n - c)^2) in double from the saved norms (a float32 norm beyond float32's range
// is already inf here: unlike the CPU and Triton kernels, which keep double norms for this, a
// penalty brought back into range by a tiny weight then stays inf). When the squares overflow
// although the weighted mean would not, the weight goes inside them, as in the reference.
template <typename A>
__global__ void __launch_bounds__(kThreads) penalty_kernel(const A* __restrict__ norms, A* penalty,
                                                           int64_t B, double center, double weight) {
  const double q = weight / double(B);
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < B; i += kThreads) {
    const double d = double(norms[i]) - center;
    acc += d * d;
  }
  double p = block_reduce_all<Sum>(acc) * q;
  if (isinf(p)) {
    const double root_q = sqrt(q);
    double inside = 0.0;
    for (int64_t i = threadIdx.x; i < B; i += kThreads) {
      const double d = (double(norms[i]) - center) * root_q;
      inside += d * d;
    }
    inside = block_reduce_all<Sum>(inside);
    if (!isinf(inside)) p = inside;
  }
  if (threadIdx.x == 0) *penalty = A(p);
}

// out = s*g + (gn - s*c) * g/n per row. A row whose saved norm is ordinary (normal and finite in
// A, coefficient finite in A) is one scaled copy; the others (denormal: 1/n overflows and the norm
// lost bits; inf; 0) form g/n as (g/m) / ||g/m||, m = max |g| of the row, never through 1/n.
// Every thread of a block works on the same row, so both branches are uniform per block.
template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(const typename Acc<T>::type* gp,
                                                            const typename Acc<T>::type* gn,
                                                            const T* __restrict__ g,
                                                            const typename Acc<T>::type* norms,
                                                            T* __restrict__ out, int64_t B, int64_t N,
                                                            double center, double weight) {
  using A = typename Acc<T>::type;
  const int64_t row = blockIdx.y;
  const double n = double(norms[row]);
  const double s = double(*gp) * 2.0 * weight / double(B);
  const double rest = double(gn[row]) - s * center;
  const double coef = s + rest / (n > 0.0 ? n : 1.0);
  const T* in = g + row * N;
  T* o = out + row * N;
  const int64_t first = int64_t(blockIdx.x) * kThreads + threadIdx.x, stride = int64_t(gridDim.x) * kThreads;
  if (n >= Range<A>::lo && n <= Range<A>::hi && fabs(coef) <= Range<A>::hi) {
    const A c = A(coef);
    for (int64_t j = first; j < N; j += stride) o[j] = Convert<T>::store(A(Convert<T>::load(in[j])) * c);
    return;
  }
  double m = 0.0, nans = 0.0;
  for (int64_t j = threadIdx.x; j < N; j += kThreads) {
    const double a = fabs(double(Convert<T>::load(in[j])));
    nans += a != a ? 1.0 : 0.0;
    m = a > m ? a : m;
  }
  m = block_reduce_all<Max>(m);
  nans = block_reduce_all<Sum>(nans);
  if (nans > 0.0 || !(m > 0.0) || m > kDoubleMax) m = 1.0;  // zero, inf or NaN rows: as the reference
  double r2 = 0.0;
  for (int64_t j = threadIdx.x; j < N; j += kThreads) {
    const double u = double(Convert<T>::load(in[j])) / m;  // 1/m may overflow, the quotient cannot
    r2 += u * u;
  }
  double r = sqrt(block_reduce_all<Sum>(r2));
  if (!(r > 0.0)) r = 1.0;
  for (int64_t j = first; j < N; j += stride) {
    const double v = double(Convert<T>::load(in[j]));
    o[j] = Convert<T>::store(A(s * v + rest * ((v / m) / r)));
  }
}

// Rows are sliced when the batch fills fewer than kTargetBlocks blocks (about two per SM of a
// large GPU), each slice at least kMinSlice elements (one block's worth of streaming).
constexpr int64_t kTargetBlocks = 256, kMinSlice = 8192, kMaxSlices = 64;

int64_t row_slices(int64_t B, int64_t N) {
  if (B >= kTargetBlocks) return 1;
  int64_t s = (kTargetBlocks + B - 1) / B;
  if (s > N / kMinSlice) s = N / kMinSlice;
  if (s > kMaxSlices) s = kMaxSlices;
  return s < 1 ? 1 : s;
}

template <typename T>
int forward(const void* g, void* norms, void* penalty, int64_t B, int64_t N, double c, double w,
            void* workspace, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t slices = row_slices(B, N);
  if (slices > 1) {
    if (workspace == nullptr) return int(cudaErrorInvalidValue);
    const int64_t chunk = (N + slices - 1) / slices;
    double* parts = static_cast<double*>(workspace);
    launch_kernel(row_part_kernel<T>, dim3(unsigned(slices), unsigned(B)), kThreads, 0, stream,
                  static_cast<const T*>(g), parts, N, chunk);
    launch_kernel(row_norm_from_parts_kernel<T>, unsigned(B), kThreads, 0, stream, static_cast<const T*>(g),
                  static_cast<const double*>(parts), static_cast<A*>(norms), N, int(slices));
  } else {
    launch_kernel(row_norm_kernel<T>, unsigned(B), kThreads, 0, stream, static_cast<const T*>(g),
                  static_cast<A*>(norms), N);
  }
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

extern "C" int64_t gankern_norm_penalty_workspace_elems(int64_t B, int64_t N) {
  const int64_t slices = row_slices(B, N);
  return slices > 1 ? B * slices : 0;
}

extern "C" int gankern_norm_penalty_cuda(const void* g, void* norms, void* penalty, int64_t B, int64_t N,
                                         int dtype, double c, double w, void* workspace, void* stream_ptr) {
  cudaStream_t s = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case kFloat32: return forward<float>(g, norms, penalty, B, N, c, w, workspace, s);
    case kFloat64: return forward<double>(g, norms, penalty, B, N, c, w, workspace, s);
    case kFloat16: return forward<half_bits>(g, norms, penalty, B, N, c, w, workspace, s);
    case kBFloat16: return forward<bf16_bits>(g, norms, penalty, B, N, c, w, workspace, s);
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
