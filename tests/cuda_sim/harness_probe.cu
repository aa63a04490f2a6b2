// Kernels that probe the CUDA host harness itself (tests/test_cuda_sim_harness.py): what it must
// compute (shuffles, votes, barriers, indices) and what it must catch (a reduction missing a
// __syncthreads() under TSan, a one-past-the-end store under ASan, misuse of warp intrinsics, a
// deadlock, a bad launch). Built as host C++ against gankern/cuda_sim.h; `harness_probe MODE`.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "gankern/launch.h"

namespace {

constexpr int kThreads = 256;

// A block sum through shared memory; with_barrier=false drops the barrier between the writes
// of the partial sums and their reads: the classic racecheck bug.
__global__ void block_sum(const float* x, float* out, int n, bool with_barrier) {
  __shared__ float partial[kThreads];
  float v = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  partial[threadIdx.x] = v;
  if (with_barrier) __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int i = 0; i < kThreads; ++i) s += partial[i];
    *out = s;
  }
}

// out[i] = 2 * x[i] for i in [0, n], one element too many when past_end.
__global__ void scale(const float* x, float* out, int n, bool past_end) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n + (past_end ? 1 : 0)) out[i] = 2.f * (i < n ? x[i] : 0.f);
}

// Each lane records what every warp intrinsic gave it, for the host to check against the
// CUDA programming guide's definitions.
__global__ void warp_ops(int* down, int* up, int* xr, int* idx, int* w8, unsigned* ballot, int* any,
                         int* all, double* dbl) {
  const int t = threadIdx.x, lane = t & 31;
  down[t] = __shfl_down_sync(0xffffffffu, t * 10, 3);
  up[t] = __shfl_up_sync(0xffffffffu, t * 10, 5);
  xr[t] = __shfl_xor_sync(0xffffffffu, t * 10, 6);
  idx[t] = __shfl_sync(0xffffffffu, t * 10, 7);
  w8[t] = __shfl_down_sync(0xffffffffu, t, 2, 8);  // segments of 8 lanes
  ballot[t] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  any[t] = __any_sync(0xffffffffu, lane == 31);
  all[t] = __all_sync(0xffffffffu, lane < 31);
  dbl[t] = __shfl_xor_sync(0xffffffffu, double(t) + 0.25, 1);
}

// Every thread writes its linear block and thread id: indices of a 3-D grid of 3-D blocks.
__global__ void indices(int64_t* out) {
  const int64_t block = blockIdx.x + int64_t(gridDim.x) * (blockIdx.y + int64_t(gridDim.y) * blockIdx.z);
  const int64_t thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int64_t per_block = int64_t(blockDim.x) * blockDim.y * blockDim.z;
  out[block * per_block + thread] = block * 10000 + thread;
}

// Barrier rounds: thread t writes, every thread reads its neighbour's value after the barrier.
__global__ void rounds(int* out) {
  __shared__ int s[64];
  int v = threadIdx.x;
  for (int r = 0; r < 5; ++r) {
    s[threadIdx.x] = v;
    __syncthreads();
    v = s[(threadIdx.x + 1) % blockDim.x] + 1;
    __syncthreads();
  }
  out[threadIdx.x] = v;
}

__global__ void deadlock(int* out) {
  // Lanes 0-15 wait at the barrier, lanes 16-31 at a shuffle that needs lanes 0-15.
  if (threadIdx.x < 16) __syncthreads();
  else out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
}

__global__ void mask_without_self(int* out) { out[threadIdx.x] = __shfl_sync(0x1u, 1, 0); }

__global__ void exited_lane(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
}

int fail(const char* what) {
  std::printf("FAIL %s\n", what);
  return 1;
}

int expect_launch_error(const char* mode, const char* needle) {
  const cudaError_t err = cudaGetLastError();
  const char* msg = cudaGetErrorString(err);
  std::printf("%s: error %d: %s\n", mode, int(err), msg);
  return err != cudaSuccess && std::strstr(msg, needle) ? 0 : fail(mode);
}

}  // namespace

using gankern::launch_kernel;

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  if (!std::strcmp(mode, "reduce") || !std::strcmp(mode, "reduce_no_barrier")) {
    std::vector<float> x(1000, 1.f);
    float out = 0.f;
    launch_kernel(block_sum, 1, kThreads, 0, nullptr, x.data(), &out, 1000, !std::strcmp(mode, "reduce"));
    std::printf("%s: sum %g\n", mode, out);
    return out == 1000.f ? 0 : 3;
  }
  if (!std::strcmp(mode, "store") || !std::strcmp(mode, "store_past_end")) {
    const int n = 1000;
    float* x = new float[n];
    float* out = new float[n];
    for (int i = 0; i < n; ++i) x[i] = float(i);
    launch_kernel(scale, (n + 255) / 256 + 1, 256, 0, nullptr, x, out, n, !std::strcmp(mode, "store_past_end"));
    const bool ok = out[n - 1] == 2.f * (n - 1);
    delete[] x;
    delete[] out;
    std::printf("%s: done\n", mode);
    return ok ? 0 : 3;
  }
  if (!std::strcmp(mode, "warp")) {
    const int n = 64;
    std::vector<int> down(n), up(n), xr(n), idx(n), w8(n), any(n), all(n);
    std::vector<unsigned> ballot(n);
    std::vector<double> dbl(n);
    launch_kernel(warp_ops, 1, n, 0, nullptr, down.data(), up.data(), xr.data(), idx.data(), w8.data(),
                  ballot.data(), any.data(), all.data(), dbl.data());
    if (cudaGetLastError() != cudaSuccess) return fail("warp launch");
    unsigned want_ballot = 0;
    for (int l = 0; l < 32; ++l) want_ballot |= unsigned(l % 3 == 0) << l;
    for (int t = 0; t < n; ++t) {
      const int lane = t & 31, base = t - lane;
      if (down[t] != (lane + 3 < 32 ? t + 3 : t) * 10) return fail("__shfl_down_sync");
      if (up[t] != (lane >= 5 ? t - 5 : t) * 10) return fail("__shfl_up_sync");
      if (xr[t] != (base + (lane ^ 6)) * 10) return fail("__shfl_xor_sync");
      if (idx[t] != (base + 7) * 10) return fail("__shfl_sync");
      if (w8[t] != ((lane % 8) + 2 < 8 ? t + 2 : t)) return fail("__shfl_down_sync width 8");
      if (ballot[t] != want_ballot) return fail("__ballot_sync");
      if (any[t] != 1 || all[t] != 0) return fail("__any_sync/__all_sync");
      if (dbl[t] != double(base + (lane ^ 1)) + 0.25) return fail("__shfl_xor_sync double");
    }
    std::printf("warp: ok\n");
    return 0;
  }
  if (!std::strcmp(mode, "indices")) {
    const dim3 grid(3, 2, 2), block(5, 3, 2);
    const int total = 12 * 30;
    std::vector<int64_t> out(total, -1);
    launch_kernel(indices, grid, block, 0, nullptr, out.data());
    for (int i = 0; i < total; ++i)
      if (out[i] != (i / 30) * 10000 + i % 30) return fail("indices");
    std::printf("indices: ok\n");
    return 0;
  }
  if (!std::strcmp(mode, "rounds")) {
    std::vector<int> out(64);
    launch_kernel(rounds, 1, 64, 0, nullptr, out.data());
    for (int t = 0; t < 64; ++t)
      if (out[t] != (t + 5) % 64 + 5) return fail("barrier rounds");
    std::printf("rounds: ok\n");
    return 0;
  }
  std::vector<int> out(64);
  if (!std::strcmp(mode, "deadlock")) {
    launch_kernel(deadlock, 1, 32, 0, nullptr, out.data());
    return expect_launch_error(mode, "deadlock");
  }
  if (!std::strcmp(mode, "mask_without_self")) {
    launch_kernel(mask_without_self, 1, 32, 0, nullptr, out.data());
    return expect_launch_error(mode, "leaves out the calling lane");
  }
  if (!std::strcmp(mode, "exited_lane")) {
    launch_kernel(exited_lane, 1, 32, 0, nullptr, out.data());
    return expect_launch_error(mode, "exited");
  }
  if (!std::strcmp(mode, "bad_block")) {
    launch_kernel(rounds, 1, 2048, 0, nullptr, out.data());
    return expect_launch_error(mode, "invalid configuration");
  }
  return fail("unknown mode");
}
