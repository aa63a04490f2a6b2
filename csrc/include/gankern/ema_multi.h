// Multi-shadow EMA update (post-hoc EMA tracks K averages of one model): for every shadow j < K
// and tensor t, shadow[j * n_tensors + t] = lerp(shadow[j * n_tensors + t], params[t], weights[j]),
// in place, reading each parameter once. Pointers arrive already validated by gankern/_native.py
// (device, dtype, contiguity, sizes, no aliasing). weight_ptr, when not null, points to K float32
// weights on the kernels' device (no host sync; graph-capturable); otherwise weights[] is used.
#pragma once
#include <cstdint>

namespace gankern {

constexpr int kMaxEmaShadows = 8;

// Same dtype pairs as ema_update_cpu. Returns 0 on success, -1 for an unsupported pair or K.
int ema_update_multi_cpu(int64_t n_tensors, int64_t n_shadows, void* const* shadow,
                         const void* const* params, const int64_t* numel, int shadow_dtype,
                         int param_dtype, const double* weights, const float* weight_ptr);

}  // namespace gankern

extern "C" {
// Same contract on CUDA; returns a cudaError_t (0 = success) or -1 for an unsupported pair or K.
int gankern_ema_update_multi_cuda(int64_t n_tensors, int64_t n_shadows, void* const* shadow,
                                  const void* const* params, const int64_t* numel, int shadow_dtype,
                                  int param_dtype, const double* weights, const float* weight_ptr,
                                  void* stream);
}
