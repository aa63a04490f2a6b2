// CPU backend of gk.ops.ema_update_: one pass over every tensor, threads over fixed chunks.
#include "gankern/ema.h"

#include <vector>

#include "gankern/common.h"

namespace gankern {
namespace {

constexpr int64_t kChunk = 1 << 16;

// torch.lerp's two-sided formula, so the result matches torch._foreach_lerp_ to the last bit
// for weights near 0 and near 1 alike.
template <typename A>
inline A lerp(A s, A p, A w) {
  A d = p - s;
  return w < A(0.5) ? s + w * d : p - d * (A(1) - w);
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
  const int64_t jobs = int64_t(tensor_of.size());
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) total += numel[t];
#pragma omp parallel for schedule(static) if (jobs > 1 && total >= kParallelMinElements)
  for (int64_t j = 0; j < jobs; ++j) {
    const int64_t t = tensor_of[j], begin = start_of[j];
    const int64_t end = begin + kChunk < numel[t] ? begin + kChunk : numel[t];
    S* s = static_cast<S*>(shadow[t]);
    const P* p = static_cast<const P*>(params[t]);
    for (int64_t i = begin; i < end; ++i)
      s[i] = Convert<S>::store(lerp<A>(A(Convert<S>::load(s[i])), A(Convert<P>::load(p[i])), w));
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
