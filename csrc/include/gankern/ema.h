// Multi-tensor EMA update: shadow[i] = lerp(shadow[i], params[i], weight), in place.
// Pointers arrive already validated by gankern/_native.py (device, dtype, contiguity, sizes, no
// aliasing). weight_ptr, when not null, points to a float32 scalar on the kernels' device: a
// schedule computed on the GPU then needs no host sync and the update can be graph-captured.
#pragma once
#include <cstdint>

namespace gankern {

// Supported (shadow, param) dtype pairs: same dtype (fp32, fp64, fp16, bf16), or fp32 shadow
// of fp16/bf16 params. Returns 0 on success, -1 for an unsupported pair.
int ema_update_cpu(int64_t n_tensors, void* const* shadow, const void* const* params,
                   const int64_t* numel, int shadow_dtype, int param_dtype, double weight,
                   const float* weight_ptr);

}  // namespace gankern

extern "C" {
// Same contract on CUDA; returns a cudaError_t (0 = success) or -1 for an unsupported pair.
int gankern_ema_update_cuda(int64_t n_tensors, void* const* shadow, const void* const* params,
                            const int64_t* numel, int shadow_dtype, int param_dtype, double weight,
                            const float* weight_ptr, void* stream);
const char* gankern_cuda_error_string(int code);
int gankern_cuda_runtime_version();
}
