// Per-sample gradient norms + gradient penalty, and the penalty's analytic backward.
// grads is (B, N) dense rows (any dense layout whose batch stride is N); norms/penalty are in the
// accumulation type (float for fp32/fp16/bf16 grads, double for fp64). Pointers arrive validated
// by gankern/_native.py.
#pragma once
#include <cstdint>

namespace gankern {

// norms[i] = ||grads[i]||, *penalty = weight * mean((norms - center)^2). Returns 0, or -1 for a
// bad dtype.
int norm_penalty_cpu(const void* grads, void* norms, void* penalty, int64_t B, int64_t N, int dtype,
                     double center, double weight);

// out[i, :] = grads[i, :] * coef[i], coef = s + inv*(grad_norms[i] - s*center), s = *grad_penalty
// * 2 * weight / B, inv = 1/norms[i] (0 where norms[i] == 0).
int norm_penalty_backward_cpu(const void* grad_penalty, const void* grad_norms, const void* grads,
                              const void* norms, void* out, int64_t B, int64_t N, int dtype,
                              double center, double weight);

}  // namespace gankern

extern "C" {
// workspace: gankern_norm_penalty_workspace_elems(B, N) doubles (0: none needed, may be null);
// small batches of long rows are summed in slices through it.
int64_t gankern_norm_penalty_workspace_elems(int64_t B, int64_t N);
int gankern_norm_penalty_cuda(const void* grads, void* norms, void* penalty, int64_t B, int64_t N,
                              int dtype, double center, double weight, void* workspace, void* stream);
int gankern_norm_penalty_backward_cuda(const void* grad_penalty, const void* grad_norms,
                                       const void* grads, const void* norms, void* out, int64_t B,
                                       int64_t N, int dtype, double center, double weight,
                                       void* stream);
}
