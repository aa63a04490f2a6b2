// The CPU lerp loop shared by ema_update_ (csrc/cpu/ema.cpp) and ema_update_multi_
// (csrc/cpu/ema_multi.cpp): both must round exactly as torch._foreach_lerp_ does.
#pragma once
#include <cstdint>

#include "gankern/common.h"
#include "gankern/cpu_dispatch.h"

namespace gankern {

// torch.lerp's two-sided formula, so the result matches torch._foreach_lerp_ to the last bit
// for weights near 0 and near 1 alike. The side is picked once per range, outside the loop:
// a select inside it kept the compiler from vectorizing (0.6x torch's speed on fp32).
template <typename S, typename P, typename A>
GK_ALWAYS_INLINE void lerp_range(S* s, const P* p, int64_t begin, int64_t end, A w) {
  if (w < A(0.5)) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const A si = A(Convert<S>::load(s[i]));
      s[i] = Convert<S>::store(si + w * (A(Convert<P>::load(p[i])) - si));
    }
  } else {
    const A wc = A(1) - w;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const A pi = A(Convert<P>::load(p[i]));
      s[i] = Convert<S>::store(pi - (pi - A(Convert<S>::load(s[i]))) * wc);
    }
  }
}

}  // namespace gankern
