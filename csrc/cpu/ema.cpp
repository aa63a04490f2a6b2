// CPU backend of gk.ops.ema_update_: one pass over every tensor, threads over fixed chunks.
#include "gankern/ema.h"

#include <vector>

#include "gankern/common.h"
#include "gankern/cpu_dispatch.h"
#include "gankern/ema_lerp.h"

namespace gankern {
namespace {

constexpr int64_t kChunk = 1 << 16;

template <typename S, typename P, typename A>
void lerp_range_generic(S* s, const P* p, int64_t begin, int64_t end, A w) {
  lerp_range<S, P, A>(s, p, begin, end, w);
}
template <typename S, typename P, typename A>
GK_TARGET_AVX2 void lerp_range_avx2(S* s, const P* p, int64_t begin, int64_t end, A w) {
  lerp_range<S, P, A>(s, p, begin, end, w);
}

template <typename S, typename P>
void ema_kernel(int64_t n, void* const* shadow, const void* const* params, const int64_t* numel,
                double weight) {
  using A = typename Acc<S>::type;
  std::vector<int64_t> tensor_of, start_of;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = 0; s < numel[t]; s += kChunk) {
      tensor_of.push_back(t);
      start_of.push_back(s);
    }
  const A w = A(weight);
  void (*range)(S*, const P*, int64_t, int64_t, A) =
      use_avx2() ? lerp_range_avx2<S, P, A> : lerp_range_generic<S, P, A>;
  const int64_t jobs = int64_t(tensor_of.size());
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) total += numel[t];
  // Dynamic: the jobs are full 64K chunks and a few tiny tensors (biases), so a static split by
  // job count leaves one thread up to 1.5x the elements of the other. Each element is written
  // by exactly one job, so the result does not depend on which thread takes it.
#pragma omp parallel for schedule(dynamic) if (jobs > 1 && total >= kParallelMinElements)
  for (int64_t j = 0; j < jobs; ++j) {
    const int64_t t = tensor_of[j], begin = start_of[j];
    const int64_t end = begin + kChunk < numel[t] ? begin + kChunk : numel[t];
    range(static_cast<S*>(shadow[t]), static_cast<const P*>(params[t]), begin, end, w);
  }
}

}  // namespace

int ema_update_cpu(int64_t n, void* const* shadow, const void* const* params, const int64_t* numel,
                   int shadow_dtype, int param_dtype, double weight, const float* weight_ptr) {
  if (weight_ptr) weight = double(*weight_ptr);
  if (shadow_dtype == param_dtype) {
    switch (shadow_dtype) {
      case kFloat32: ema_kernel<float, float>(n, shadow, params, numel, weight); return 0;
      case kFloat64: ema_kernel<double, double>(n, shadow, params, numel, weight); return 0;
      case kFloat16: ema_kernel<half_bits, half_bits>(n, shadow, params, numel, weight); return 0;
      case kBFloat16: ema_kernel<bf16_bits, bf16_bits>(n, shadow, params, numel, weight); return 0;
    }
  } else if (shadow_dtype == kFloat32 && param_dtype == kFloat16) {
    ema_kernel<float, half_bits>(n, shadow, params, numel, weight);
    return 0;
  } else if (shadow_dtype == kFloat32 && param_dtype == kBFloat16) {
    ema_kernel<float, bf16_bits>(n, shadow, params, numel, weight);
    return 0;
  }
  return -1;
}

}  // namespace gankern
