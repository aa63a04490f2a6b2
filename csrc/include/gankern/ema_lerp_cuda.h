// The CUDA lerp shared by ema_update_ (csrc/cuda/ema.cu) and ema_update_multi_
// (csrc/cuda/ema_multi.cu): torch.lerp's two-sided formula, so both round exactly as
// torch._foreach_lerp_ does for weights near 0 and near 1 alike (the CPU twin is ema_lerp.h).
#pragma once
#include <cuda_runtime.h>

namespace gankern {

template <typename A>
__device__ __forceinline__ A lerp_two_sided(A s, A p, A w) {
  A d = p - s;
  return w < A(0.5) ? s + w * d : p - d * (A(1) - w);
}

}  // namespace gankern
