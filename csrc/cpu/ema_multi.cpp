// CPU backend of gk.ops.ema_update_multi_: K shadows of one parameter list in one pass. Each
// thread takes a 64K-element chunk of one tensor and walks it in L1-sized blocks, lerping every
// shadow over the block before moving on, so the parameters come from memory once and the K-1
// later reads hit L1: 1 + 2K tensor passes instead of 3K for K separate updates.
#include "gankern/ema_multi.h"

#include <vector>

#include "gankern/common.h"
#include "gankern/cpu_dispatch.h"
#include "gankern/ema_lerp.h"

namespace gankern {
namespace {

constexpr int64_t kChunk = 1 << 16;
constexpr int64_t kBlock = 2048;  // 8 KB of fp32 params: stays in L1 while K shadows stream by

template <typename S, typename P, typename A>
GK_ALWAYS_INLINE void multi_range(S* const* s, int64_t k, const P* p, int64_t begin, int64_t end,
                                  const A* w) {
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t e = b + kBlock < end ? b + kBlock : end;
    for (int64_t j = 0; j < k; ++j) lerp_range<S, P, A>(s[j], p, b, e, w[j]);
  }
}
template <typename S, typename P, typename A>
void multi_range_generic(S* const* s, int64_t k, const P* p, int64_t begin, int64_t end, const A* w) {
  multi_range<S, P, A>(s, k, p, begin, end, w);
}
template <typename S, typename P, typename A>
GK_TARGET_AVX2 void multi_range_avx2(S* const* s, int64_t k, const P* p, int64_t begin, int64_t end,
                                     const A* w) {
  multi_range<S, P, A>(s, k, p, begin, end, w);
}

template <typename S, typename P>
void multi_kernel(int64_t n, int64_t k, void* const* shadow, const void* const* params,
                  const int64_t* numel, const double* weights) {
  using A = typename Acc<S>::type;
  A w[kMaxEmaShadows];
  for (int64_t j = 0; j < k; ++j) w[j] = A(weights[j]);
  std::vector<int64_t> tensor_of, start_of;
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t) {
    total += numel[t] * k;
    for (int64_t s = 0; s < numel[t]; s += kChunk) {
      tensor_of.push_back(t);
      start_of.push_back(s);
    }
  }
  void (*range)(S* const*, int64_t, const P*, int64_t, int64_t, const A*) =
      use_avx2() ? multi_range_avx2<S, P, A> : multi_range_generic<S, P, A>;
  const int64_t jobs = int64_t(tensor_of.size());
  // Dynamic, as in ema.cpp: full chunks and tiny tensors mixed; each element has one writer.
#pragma omp parallel for schedule(dynamic) if (jobs > 1 && total >= kParallelMinElements)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t t = tensor_of[job], begin = start_of[job];
    const int64_t end = begin + kChunk < numel[t] ? begin + kChunk : numel[t];
    S* s[kMaxEmaShadows];
    for (int64_t j = 0; j < k; ++j) s[j] = static_cast<S*>(shadow[j * n + t]);
    range(s, k, static_cast<const P*>(params[t]), begin, end, w);
  }
}

}  // namespace

int ema_update_multi_cpu(int64_t n, int64_t k, void* const* shadow, const void* const* params,
                         const int64_t* numel, int sd, int pd, const double* weights,
                         const float* weight_ptr) {
  if (k < 1 || k > kMaxEmaShadows) return -1;
  double w[kMaxEmaShadows];
  for (int64_t j = 0; j < k; ++j) w[j] = weight_ptr ? double(weight_ptr[j]) : weights[j];
  if (sd == pd) {
    switch (sd) {
      case kFloat32: multi_kernel<float, float>(n, k, shadow, params, numel, w); return 0;
      case kFloat64: multi_kernel<double, double>(n, k, shadow, params, numel, w); return 0;
      case kFloat16: multi_kernel<half_bits, half_bits>(n, k, shadow, params, numel, w); return 0;
      case kBFloat16: multi_kernel<bf16_bits, bf16_bits>(n, k, shadow, params, numel, w); return 0;
    }
  } else if (sd == kFloat32 && pd == kFloat16) {
    multi_kernel<float, half_bits>(n, k, shadow, params, numel, w);
    return 0;
  } else if (sd == kFloat32 && pd == kBFloat16) {
    multi_kernel<float, bf16_bits>(n, k, shadow, params, numel, w);
    return 0;
  }
  return -1;
}

}  // namespace gankern
