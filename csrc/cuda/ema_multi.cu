// CUDA backend of gk.ops.ema_update_multi_: K shadows of one parameter list in one launch. Same
// apex-style table as ema.cu (tensors and fixed chunks passed by value, no device metadata, no
// host sync), with K shadow pointers per tensor: each thread loads a parameter element once
// and lerps it into all K shadows, so a step moves (1 + 2K) instead of 3K tensors of bytes.
#include "gankern/common.h"
#include "gankern/ema_lerp_cuda.h"
#include "gankern/ema_multi.h"
#include "gankern/launch.h"

namespace gankern {
namespace {

constexpr int kMaxTensors = 24;
constexpr int kMaxBlocks = 320;
constexpr int kThreads = 512;
constexpr int64_t kChunk = 16384;  // elements per block: 32 per thread

struct MultiTable {
  void* shadow[kMaxTensors][kMaxEmaShadows];
  const void* param[kMaxTensors];
  int64_t numel[kMaxTensors];
  double weight[kMaxEmaShadows];
  int chunk[kMaxBlocks];
  unsigned char tensor[kMaxBlocks];
};
static_assert(sizeof(MultiTable) < 4000, "kernel parameter limit");

template <typename S, typename P>
__global__ void __launch_bounds__(kThreads) ema_multi_kernel(MultiTable table, int k,
                                                              const float* weight_ptr) {
  using A = typename Acc<S>::type;
  const int t = table.tensor[blockIdx.x];
  const int64_t begin = int64_t(table.chunk[blockIdx.x]) * kChunk;
  const int64_t n = table.numel[t];
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  const P* __restrict__ p = static_cast<const P*>(table.param[t]);
  A w[kMaxEmaShadows];
#pragma unroll
  for (int j = 0; j < kMaxEmaShadows; ++j)
    w[j] = j < k ? (weight_ptr ? A(weight_ptr[j]) : A(table.weight[j])) : A(0);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const A pi = A(Convert<P>::load(p[i]));
#pragma unroll
    for (int j = 0; j < kMaxEmaShadows; ++j) {
      if (j < k) {
        S* __restrict__ s = static_cast<S*>(table.shadow[t][j]);
        s[i] = Convert<S>::store(lerp_two_sided<A>(A(Convert<S>::load(s[i])), pi, w[j]));
      }
    }
  }
}

template <typename S, typename P>
int launch(int64_t n, int k, void* const* shadow, const void* const* params, const int64_t* numel,
           const double* weights, const float* weight_ptr, cudaStream_t stream) {
  MultiTable table;
  for (int j = 0; j < kMaxEmaShadows; ++j) table.weight[j] = j < k && weights ? weights[j] : 0.0;
  int n_tensors = 0, n_blocks = 0;
  auto flush = [&]() -> int {
    launch_kernel(ema_multi_kernel<S, P>, dim3(n_blocks), dim3(kThreads), 0, stream, table, k,
                  weight_ptr);
    n_blocks = 0;
    return int(cudaGetLastError());
  };
  auto set_slot = [&](int slot, int64_t t) {
    for (int j = 0; j < k; ++j) table.shadow[slot][j] = shadow[int64_t(j) * n + t];
    table.param[slot] = params[t];
    table.numel[slot] = numel[t];
  };
  for (int64_t t = 0; t < n; ++t) {
    if (numel[t] == 0) continue;
    set_slot(n_tensors, t);
    const int64_t chunks = (numel[t] + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      table.tensor[n_blocks] = (unsigned char)n_tensors;
      table.chunk[n_blocks] = int(c);
      ++n_blocks;
      const bool last_chunk = c == chunks - 1;
      if (n_blocks == kMaxBlocks || (n_tensors + 1 == kMaxTensors && last_chunk)) {
        const int err = flush();
        if (err != 0) return err;
        if (last_chunk) {
          n_tensors = -1;  // the next tensor starts a fresh table
        } else {           // the current tensor continues in slot 0 of the next table
          set_slot(0, t);
          n_tensors = 0;
        }
      }
    }
    ++n_tensors;
  }
  return n_blocks > 0 ? flush() : 0;
}

}  // namespace
}  // namespace gankern

using namespace gankern;

extern "C" int gankern_ema_update_multi_cuda(int64_t n, int64_t k, void* const* shadow,
                                             const void* const* params, const int64_t* numel,
                                             int sd, int pd, const double* weights,
                                             const float* weight_ptr, void* stream_ptr) {
  if (k < 1 || k > kMaxEmaShadows) return -1;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int kk = int(k);
  if (sd == pd) {
    switch (sd) {
      case kFloat32: return launch<float, float>(n, kk, shadow, params, numel, weights, weight_ptr, stream);
      case kFloat64: return launch<double, double>(n, kk, shadow, params, numel, weights, weight_ptr, stream);
      case kFloat16: return launch<half_bits, half_bits>(n, kk, shadow, params, numel, weights, weight_ptr, stream);
      case kBFloat16: return launch<bf16_bits, bf16_bits>(n, kk, shadow, params, numel, weights, weight_ptr, stream);
    }
  } else if (sd == kFloat32 && pd == kFloat16) {
    return launch<float, half_bits>(n, kk, shadow, params, numel, weights, weight_ptr, stream);
  } else if (sd == kFloat32 && pd == kBFloat16) {
    return launch<float, bf16_bits>(n, kk, shadow, params, numel, weights, weight_ptr, stream);
  }
  return -1;
}
