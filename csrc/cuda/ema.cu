// CUDA backend of gk.ops.ema_update_: apex-style multi_tensor_apply. The host packs up to
// kMaxTensors tensors and kMaxBlocks fixed-size chunks into a table passed by value as the
// kernel argument (under the 4 KiB parameter limit), so one launch covers many tensors with
// no device-side metadata allocation and no host sync.
#include <cuda_runtime.h>

#include "gankern/common.h"
#include "gankern/ema.h"
#include "gankern/ema_lerp_cuda.h"
#include "gankern/launch.h"

namespace gankern {
namespace {

constexpr int kMaxTensors = 48;
constexpr int kMaxBlocks = 320;
constexpr int kThreads = 512;
constexpr int64_t kChunk = 16384;  // elements per table entry (kSplit blocks of 4096)

struct EmaTable {
  void* shadow[kMaxTensors];
  const void* param[kMaxTensors];
  int64_t numel[kMaxTensors];
  int chunk[kMaxBlocks];
  unsigned char tensor[kMaxBlocks];
};
static_assert(sizeof(EmaTable) < 4000, "kernel parameter limit");

// kVec elements per access where both tensors are aligned to kVec elements: 16 bytes of a
// float shadow (LDG.128), 8 of a 16-bit one; parts start at multiples of kChunk / kSplit
// elements, so a tensor whose base is aligned has every part aligned.
constexpr int kVec = 4;
template <typename T>
struct alignas(sizeof(T) * kVec) Vec { T v[kVec]; };

// Each table chunk is cut into kSplit parts, one block each: a table of kMaxBlocks chunks
// launches kMaxBlocks * kSplit = 1280 blocks of 4096 elements (over two full waves of
// 512-thread blocks on a 132-SM H100) instead of 320, without a bigger parameter table.
constexpr int kSplit = 4;

template <typename S, typename P>
__global__ void __launch_bounds__(kThreads) ema_kernel(EmaTable table, double weight,
                                                        const float* weight_ptr) {
  using A = typename Acc<S>::type;
  const int entry = blockIdx.x / kSplit;
  const int t = table.tensor[entry];
  const int64_t part = kChunk / kSplit;
  const int64_t begin = int64_t(table.chunk[entry]) * kChunk + int64_t(blockIdx.x % kSplit) * part;
  const int64_t n = table.numel[t];
  const int64_t end = begin + part < n ? begin + part : n;
  S* __restrict__ s = static_cast<S*>(table.shadow[t]);
  const P* __restrict__ p = static_cast<const P*>(table.param[t]);
  const A w = weight_ptr ? A(*weight_ptr) : A(weight);
  int64_t i = begin + threadIdx.x;
  const bool aligned = reinterpret_cast<uintptr_t>(s) % alignof(Vec<S>) == 0 &&
                       reinterpret_cast<uintptr_t>(p) % alignof(Vec<P>) == 0;
  if (aligned && begin < end) {
    // Whole vectors first (begin is a multiple of kVec), then the tensor's last few elements.
    const int64_t n_vec = (end - begin) / kVec;
    Vec<S>* __restrict__ sv = reinterpret_cast<Vec<S>*>(s + begin);
    const Vec<P>* __restrict__ pv = reinterpret_cast<const Vec<P>*>(p + begin);
    for (int64_t j = threadIdx.x; j < n_vec; j += kThreads) {
      Vec<S> a = sv[j];
      const Vec<P> b = pv[j];
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        a.v[e] = Convert<S>::store(lerp_two_sided<A>(A(Convert<S>::load(a.v[e])), A(Convert<P>::load(b.v[e])), w));
      sv[j] = a;
    }
    i = begin + n_vec * kVec + threadIdx.x;
  }
#pragma unroll 4
  for (; i < end; i += kThreads)
    s[i] = Convert<S>::store(lerp_two_sided<A>(A(Convert<S>::load(s[i])), A(Convert<P>::load(p[i])), w));
}

template <typename S, typename P>
int launch(int64_t n, void* const* shadow, const void* const* params, const int64_t* numel,
           double weight, const float* weight_ptr, cudaStream_t stream) {
  EmaTable table;
  int n_tensors = 0, n_blocks = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (numel[t] == 0) continue;
    table.shadow[n_tensors] = shadow[t];
    table.param[n_tensors] = params[t];
    table.numel[n_tensors] = numel[t];
    const int64_t chunks = (numel[t] + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      table.tensor[n_blocks] = (unsigned char)n_tensors;
      table.chunk[n_blocks] = int(c);
      ++n_blocks;
      const bool table_full = n_blocks == kMaxBlocks;
      const bool last_chunk = c == chunks - 1;
      const bool tensors_full = n_tensors + 1 == kMaxTensors && last_chunk;
      if (table_full || tensors_full) {
        launch_kernel(ema_kernel<S, P>, n_blocks * kSplit, kThreads, 0, stream, table, weight, weight_ptr);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return int(err);
        n_blocks = 0;
        if (last_chunk) {
          n_tensors = -1;  // the next tensor starts a fresh table
        } else {           // the current tensor continues in slot 0 of the next table
          table.shadow[0] = table.shadow[n_tensors];
          table.param[0] = table.param[n_tensors];
          table.numel[0] = table.numel[n_tensors];
          n_tensors = 0;
        }
      }
    }
    ++n_tensors;
  }
  if (n_blocks > 0) {
    launch_kernel(ema_kernel<S, P>, n_blocks * kSplit, kThreads, 0, stream, table, weight, weight_ptr);
    return int(cudaGetLastError());
  }
  return 0;
}

}  // namespace
}  // namespace gankern

using namespace gankern;

extern "C" int gankern_ema_update_cuda(int64_t n, void* const* shadow, const void* const* params,
                                       const int64_t* numel, int sd, int pd, double weight,
                                       const float* weight_ptr, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (sd == pd) {
    switch (sd) {
      case kFloat32: return launch<float, float>(n, shadow, params, numel, weight, weight_ptr, stream);
      case kFloat64: return launch<double, double>(n, shadow, params, numel, weight, weight_ptr, stream);
      case kFloat16: return launch<half_bits, half_bits>(n, shadow, params, numel, weight, weight_ptr, stream);
      case kBFloat16: return launch<bf16_bits, bf16_bits>(n, shadow, params, numel, weight, weight_ptr, stream);
    }
  } else if (sd == kFloat32 && pd == kFloat16) {
    return launch<float, half_bits>(n, shadow, params, numel, weight, weight_ptr, stream);
  } else if (sd == kFloat32 && pd == kBFloat16) {
    return launch<float, bf16_bits>(n, shadow, params, numel, weight, weight_ptr, stream);
  }
  return -1;
}

extern "C" const char* gankern_cuda_error_string(int code) {
  return code == -1 ? "unsupported dtype combination" : cudaGetErrorString(cudaError_t(code));
}

extern "C" int gankern_cuda_runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}
