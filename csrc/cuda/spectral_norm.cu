// CUDA backend of gankern's spectral norm, on the (A, M, B) view of spectral_norm.h.
//
// Per power iteration: a row pass (t = W v, one block per row), a column pass (s = W^T t, one
// thread per column, coalesced along B), and two single-block kernels for the norms. sigma
// falls out of the last v update (sigma = ||W^T u||), so no third pass over W is needed. Every
// reduction is a fixed tree (no atomics), so results are bit-reproducible run to run.
// D layers are small (M, K ≲ a few thousand), so this is launch-bound, not bandwidth-bound:
// 4 launches per iteration instead of torch's ~12 per forward.
#include <cuda_runtime.h>

#include <cmath>

#include "gankern/common.h"
#include "gankern/index32.h"
#include "gankern/spectral_norm.h"
#include "gankern/launch.h"

namespace gankern {
namespace {

constexpr int kThreads = 256;
constexpr int kSingleBlock = 1024;
constexpr int kMaxPartials = 1024;
constexpr int kScalars = 8;

// Workspace layout, in accumulator elements: [t: M][s: K][scalars: kScalars][partials].
struct Workspace {
  template <typename A>
  __host__ __device__ static A* t(A* w) { return w; }
  template <typename A>
  __host__ __device__ static A* s(A* w, int64_t M) { return w + M; }
  template <typename A>
  __host__ __device__ static A* scalars(A* w, int64_t M, int64_t K) { return w + M + K; }
  template <typename A>
  __host__ __device__ static A* partials(A* w, int64_t M, int64_t K) { return w + M + K + kScalars; }
};

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block, result returned to every thread.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ double raw[32];  // double-typed: aligned for either accumulator
  A* sh = reinterpret_cast<A*>(raw);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < n_warps) ? sh[lane] : A(0);
  if (wid == 0) v = warp_sum(v);
  __syncthreads();
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  v = sh[0];
  __syncthreads();
  return v;
}

// t[i] = sum_k W(i, k) x[k], W(i, a*B + b) at (a*M + i)*B + b. One block per row. Summed in
// double whatever T (so is cols_dot): in float the CUDA u drifted 3x further from torch's than
// the CPU backend's after two training steps of an ill-conditioned ConvTranspose weight (1.1e-5,
// over the 1e-5 float32 tolerance; 6.5e-6 in double). Memory-bound: the FP64 FMAs cost nothing
// on sm_80/sm_90.
// The threads stride over all K = Aa*B columns of the row, not over b within each a: for a
// dim=1 weight (ConvTranspose, B = kh*kw = 9 or 16) a loop over b kept 9-16 of 256 threads
// busy. (a, b) advance by (blockDim / B, blockDim % B) with a carry: no divide per element.
template <typename T, typename X, typename A>
__global__ void rows_dot(const T* __restrict__ w, const X* __restrict__ x, int64_t Aa, int64_t M,
                         int64_t B, A* __restrict__ t) {
  const int64_t i = blockIdx.x;
  const int64_t K = Aa * B;
  const int64_t da = blockDim.x / B, db = blockDim.x - da * B;
  int64_t a = threadIdx.x / B, b = threadIdx.x - (threadIdx.x / B) * B;
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    acc += double(Convert<T>::load(w[(a * M + i) * B + b])) * double(Convert<X>::load(x[k]));
    a += da;
    b += db;
    if (b >= B) {
      b -= B;
      ++a;
    }
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) t[i] = A(acc);
}

// u = t / max(||t||, eps); scalars[0] = max(||t||, eps).
template <typename T, typename A>
__global__ void normalize_u(const A* __restrict__ t, int64_t M, double eps, T* __restrict__ u,
                            A* __restrict__ scalars) {
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) ss += double(t[i]) * double(t[i]);
  ss = block_sum(ss);
  const double dt = fmax(sqrt(ss), eps);
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) u[i] = Convert<T>::store(A(double(t[i]) / dt));
  if (threadIdx.x == 0) scalars[0] = A(dt);
}

// Partial s over a slice of rows: parts[y][k] = sum_{i in slice y} W(i, k) t[i] / scalars[0],
// so s = W^T u is the sum over y. One thread per column (rows read coalesced), blockIdx.y the
// row slice: a wide layer (K = 4608) has only 18 blocks of columns, so its M rows are cut into
// slices until there are enough blocks to fill the GPU. t is normalized inside the sum: a float
// W^T t overflows for weights beyond ~1e19.
template <typename T, typename A>
__global__ void cols_dot(const T* __restrict__ w, const A* __restrict__ t, int64_t Aa, int64_t M,
                         int64_t B, int64_t rows_per_slice, const A* __restrict__ scalars,
                         A* __restrict__ parts) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t K = Aa * B;
  if (k >= K) return;
  const int64_t a = k / B, b = k - a * B;
  const T* col = w + a * M * B + b;
  const A inv = A(1) / scalars[0];
  const int64_t i0 = int64_t(blockIdx.y) * rows_per_slice;
  const int64_t i1 = i0 + rows_per_slice < M ? i0 + rows_per_slice : M;
  double acc = 0.0;
  for (int64_t i = i0; i < i1; ++i) acc += double(Convert<T>::load(col[i * B])) * double(t[i] * inv);
  parts[int64_t(blockIdx.y) * K + k] = A(acc);
}

// v = s / max(||s||, eps); sigma = ||s||^2 / max(||s||, eps) (= u^T W v); copies on the last.
template <typename T, typename A>
__global__ void finalize_v(const A* __restrict__ parts, int n_slices, A* __restrict__ s, int64_t K,
                           int64_t M, double eps, T* __restrict__ v, const T* __restrict__ u, bool last,
                           T* __restrict__ sigma, T* __restrict__ u_copy, T* __restrict__ v_copy) {
  double ss = 0.0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    A sk = parts[k];
    for (int y = 1; y < n_slices; ++y) sk += parts[int64_t(y) * K + k];  // fixed order: deterministic
    s[k] = sk;
    ss += double(sk) * double(sk);
  }
  ss = block_sum(ss);
  const double nw = sqrt(ss), dw = fmax(nw, eps);
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const T vk = Convert<T>::store(A(double(s[k]) / dw));
    v[k] = vk;
    if (last) v_copy[k] = vk;
  }
  if (last) {
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x) u_copy[i] = u[i];
    if (threadIdx.x == 0) *sigma = Convert<T>::store(A(nw * nw / dw));
  }
}

// scalars[1] = u . t (sigma when t = W v); also written to sigma_out when given.
template <typename T, typename A>
__global__ void dot_u(const T* __restrict__ u, const A* __restrict__ t, int64_t M,
                      A* __restrict__ scalars, T* __restrict__ sigma_out) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) acc += double(Convert<T>::load(u[i])) * double(t[i]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    scalars[1] = A(acc);
    if (sigma_out) *sigma_out = Convert<T>::store(A(acc));
  }
}

template <typename T, typename A>
__global__ void scale_kernel(const T* __restrict__ w, int64_t n, const T* __restrict__ sigma,
                             T* __restrict__ out) {
  // A multiply by 1/sigma: within an ulp of torch's division, and cheaper.
  const A r = A(1) / A(Convert<T>::load(*sigma));
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x)
    out[j] = Convert<T>::store(A(Convert<T>::load(w[j])) * r);
}

// partials[block] = sum over the block's grid-stride share of G * W.
template <typename T, typename A>
__global__ void grad_dot_partials(const T* __restrict__ g, const T* __restrict__ w, int64_t n,
                                  A* __restrict__ partials) {
  A acc = A(0);
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += int64_t(gridDim.x) * blockDim.x)
    acc += A(Convert<T>::load(g[j])) * A(Convert<T>::load(w[j]));
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// scalars[2] = <G, W> / sigma^2, scalars[3] = 1 / sigma; sigma from *sigma or scalars[1].
template <typename T, typename A>
__global__ void backward_coefficients(const A* __restrict__ partials, int n_partials,
                                      const T* __restrict__ sigma, A* __restrict__ scalars) {
  double acc = 0.0;
  for (int j = threadIdx.x; j < n_partials; j += blockDim.x) acc += double(partials[j]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    const double s = sigma ? double(Convert<T>::load(*sigma)) : double(scalars[1]);
    scalars[2] = A(acc / (s * s));
    scalars[3] = A(1.0 / s);
  }
}

// out = G / sigma - c * u v^T, elementwise on the (A, M, B) view. I: uint32_t when n fits
// (gankern/index32.h), so the two divides per element are 32-bit.
template <typename T, typename A, typename I>
__global__ void backward_apply(const T* __restrict__ g, const T* __restrict__ u,
                               const T* __restrict__ v, I M, I B, I n,
                               const A* __restrict__ scalars, T* __restrict__ out) {
  const A c = scalars[2], rs = scalars[3];
  for (I j = I(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += I(gridDim.x) * blockDim.x) {
    const I r = j / B, b = j - r * B, a = r / M, i = r - a * M;
    out[j] = Convert<T>::store(A(Convert<T>::load(g[j])) * rs -
                               c * A(Convert<T>::load(u[i])) * A(Convert<T>::load(v[a * B + b])));
  }
}

// Row slices of cols_dot: enough column blocks x slices to fill a big GPU (kTargetBlocks), at
// most kMaxSlices (their partials are summed by the one-block finalize), at least 64 rows each.
constexpr int kTargetBlocks = 512;
constexpr int kMaxSlices = 8;
int col_slices(int64_t col_blocks, int64_t M) {
  int64_t n = (kTargetBlocks + col_blocks - 1) / col_blocks;
  if (n > kMaxSlices) n = kMaxSlices;
  if (n > M / 64) n = M / 64;
  return int(n > 1 ? n : 1);
}

int grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return int(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

template <typename T>
int power_iteration(const void* wp, int64_t Aa, int64_t M, int64_t B, void* up, void* vp,
                    int64_t n_iter, double eps, void* sigma, void* u_copy, void* v_copy,
                    void* work, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const T* w = static_cast<const T*>(wp);
  T *u = static_cast<T*>(up), *v = static_cast<T*>(vp);
  const int64_t K = Aa * B;
  A* ws = static_cast<A*>(work);
  A *t = Workspace::t(ws), *s = Workspace::s(ws, M), *sc = Workspace::scalars(ws, M, K);
  A* parts = Workspace::partials(ws, M, K);
  const int64_t col_blocks = (K + kThreads - 1) / kThreads;
  const int n_slices = col_slices(col_blocks, M);
  const int64_t rows_per_slice = (M + n_slices - 1) / n_slices;
  for (int64_t it = 0; it < n_iter; ++it) {
    launch_kernel(rows_dot<T, T, A>, int(M), kThreads, 0, stream, w, v, Aa, M, B, t);
    launch_kernel(normalize_u<T, A>, 1, kSingleBlock, 0, stream, t, M, eps, u, sc);
    launch_kernel(cols_dot<T, A>, dim3(unsigned(col_blocks), unsigned(n_slices)), kThreads, 0, stream, w, t, Aa, M, B,
                  rows_per_slice, sc, parts);
    const bool last = it == n_iter - 1;
    launch_kernel(finalize_v<T, A>, 1, kSingleBlock, 0, stream, parts, n_slices, s, K, M, eps, v, u, last,
                  static_cast<T*>(sigma), static_cast<T*>(u_copy), static_cast<T*>(v_copy));
  }
  return int(cudaGetLastError());
}

template <typename T>
void launch_sigma(const T* w, int64_t Aa, int64_t M, int64_t B, const T* u, const T* v, T* sigma,
                  typename Acc<T>::type* ws, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t K = Aa * B;
  A *t = Workspace::t(ws), *sc = Workspace::scalars(ws, M, K);
  launch_kernel(rows_dot<T, T, A>, int(M), kThreads, 0, stream, w, v, Aa, M, B, t);
  launch_kernel(dot_u<T, A>, 1, kSingleBlock, 0, stream, u, t, M, sc, sigma);
}

template <typename T>
int sigma_of(const void* w, int64_t Aa, int64_t M, int64_t B, const void* u, const void* v,
             void* sigma, void* work, cudaStream_t stream) {
  launch_sigma<T>(static_cast<const T*>(w), Aa, M, B, static_cast<const T*>(u),
                  static_cast<const T*>(v), static_cast<T*>(sigma),
                  static_cast<typename Acc<T>::type*>(work), stream);
  return int(cudaGetLastError());
}

template <typename T>
int scale(const void* w, int64_t n, const void* sigma, void* out, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  launch_kernel(scale_kernel<T, A>, grid_for(n), kThreads, 0, stream, static_cast<const T*>(w), n,
                                                           static_cast<const T*>(sigma),
                                                           static_cast<T*>(out));
  return int(cudaGetLastError());
}

template <typename T>
int normalize_backward(const void* gp, const void* wp, int64_t Aa, int64_t M, int64_t B,
                       const void* up, const void* vp, const void* sigma, void* outp, void* work,
                       cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const T *g = static_cast<const T*>(gp), *w = static_cast<const T*>(wp);
  const T *u = static_cast<const T*>(up), *v = static_cast<const T*>(vp);
  const int64_t K = Aa * B, n = Aa * M * B;
  A* ws = static_cast<A*>(work);
  A *sc = Workspace::scalars(ws, M, K), *partials = Workspace::partials(ws, M, K);
  if (!sigma) launch_sigma<T>(w, Aa, M, B, u, v, nullptr, ws, stream);  // sigma = u^T W v
  const int n_partials = grid_for(n) < kMaxPartials ? grid_for(n) : kMaxPartials;
  launch_kernel(grad_dot_partials<T, A>, n_partials, kThreads, 0, stream, g, w, n, partials);
  launch_kernel(backward_coefficients<T, A>, 1, kSingleBlock, 0, stream, partials, n_partials,
                                                             static_cast<const T*>(sigma), sc);
  if (fits_index32(n)) {
    launch_kernel(backward_apply<T, A, uint32_t>, grid_for(n), kThreads, 0, stream, g, u, v, uint32_t(M),
                  uint32_t(B), uint32_t(n), static_cast<const A*>(sc), static_cast<T*>(outp));
  } else {
    launch_kernel(backward_apply<T, A, int64_t>, grid_for(n), kThreads, 0, stream, g, u, v, M, B, n,
                  static_cast<const A*>(sc), static_cast<T*>(outp));
  }
  return int(cudaGetLastError());
}

}  // namespace
}  // namespace gankern

using namespace gankern;

#define GK_SN_DISPATCH(dtype, CALL)                  \
  switch (dtype) {                                   \
    case kFloat32: { using T = float; return CALL; }       \
    case kFloat64: { using T = double; return CALL; }      \
    case kFloat16: { using T = half_bits; return CALL; }   \
    case kBFloat16: { using T = bf16_bits; return CALL; }  \
  }                                                  \
  return -1;

extern "C" int64_t gankern_sn_workspace_elems(int64_t A, int64_t M, int64_t B) {
  // partials: the backward's <G, W> partials, or the power iteration's kMaxSlices rows of W^T u.
  const int64_t parts = kMaxSlices * A * B > kMaxPartials ? kMaxSlices * A * B : kMaxPartials;
  return M + A * B + kScalars + parts;
}

extern "C" int gankern_sn_power_iteration_cuda(int dtype, const void* w, int64_t A, int64_t M,
                                               int64_t B, void* u, void* v, int64_t n_iter,
                                               double eps, void* sigma, void* u_copy, void* v_copy,
                                               void* workspace, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  GK_SN_DISPATCH(dtype, power_iteration<T>(w, A, M, B, u, v, n_iter, eps, sigma, u_copy, v_copy,
                                           workspace, s))
}

extern "C" int gankern_sn_sigma_cuda(int dtype, const void* w, int64_t A, int64_t M, int64_t B,
                                     const void* u, const void* v, void* sigma, void* workspace,
                                     void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  GK_SN_DISPATCH(dtype, sigma_of<T>(w, A, M, B, u, v, sigma, workspace, s))
}

extern "C" int gankern_sn_scale_cuda(int dtype, const void* w, int64_t numel, const void* sigma,
                                     void* out, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  GK_SN_DISPATCH(dtype, scale<T>(w, numel, sigma, out, s))
}

extern "C" int gankern_sn_normalize_backward_cuda(int dtype, const void* grad, const void* w,
                                                  int64_t A, int64_t M, int64_t B, const void* u,
                                                  const void* v, const void* sigma, void* out,
                                                  void* workspace, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  GK_SN_DISPATCH(dtype, normalize_backward<T>(grad, w, A, M, B, u, v, sigma, out, workspace, s))
}
