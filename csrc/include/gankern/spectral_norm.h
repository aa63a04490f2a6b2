// Spectral norm: power iteration, sigma, W/sigma and its backward, on the (A, M, B) view of a
// contiguous weight: element (a, i, b) at (a*M + i)*B + b is W[i, a*B + b] of torch's matrix
// (row = index along dim, columns = the other dims flattened), so no permuted copy is made.
// Pointers arrive validated by gankern/_native.py (device, dtype, contiguity, sizes). sigma is
// a scalar of the weight's dtype; u (M), v (A*B) and their copies share the weight's dtype.
#pragma once
#include <cstdint>

namespace gankern {

// n_iter times: u = normalize(W v), v = normalize(W^T u), in place, one pass over W per
// iteration (W^T u = W^T (W v) / ||W v||); then sigma = ||W^T u|| (= u^T W v after the v update)
// and u_copy/v_copy = the new u, v. Returns 0, or -1 for an unsupported dtype.
int sn_power_iteration_cpu(int dtype, const void* w, int64_t A, int64_t M, int64_t B, void* u,
                           void* v, int64_t n_iter, double eps, void* sigma, void* u_copy,
                           void* v_copy);
// sigma = u^T W v.
int sn_sigma_cpu(int dtype, const void* w, int64_t A, int64_t M, int64_t B, const void* u,
                 const void* v, void* sigma);
// out = W / sigma (numel elements).
int sn_scale_cpu(int dtype, const void* w, int64_t numel, const void* sigma, void* out);
// out = G/sigma - (<G, W>/sigma^2) u v^T.
int sn_normalize_backward_cpu(int dtype, const void* grad, const void* w, int64_t A, int64_t M,
                              int64_t B, const void* u, const void* v, const void* sigma, void* out);

}  // namespace gankern

extern "C" {
// The same on CUDA, asynchronous on `stream`; returns a cudaError_t (0 = ok) or -1.
// workspace: float (double for float64) scratch of sn_workspace_elems(A, M, B) elements.
int64_t gankern_sn_workspace_elems(int64_t A, int64_t M, int64_t B);
int gankern_sn_power_iteration_cuda(int dtype, const void* w, int64_t A, int64_t M, int64_t B,
                                    void* u, void* v, int64_t n_iter, double eps, void* sigma,
                                    void* u_copy, void* v_copy, void* workspace, void* stream);
int gankern_sn_sigma_cuda(int dtype, const void* w, int64_t A, int64_t M, int64_t B, const void* u,
                          const void* v, void* sigma, void* workspace, void* stream);
int gankern_sn_scale_cuda(int dtype, const void* w, int64_t numel, const void* sigma, void* out,
                          void* stream);
int gankern_sn_normalize_backward_cuda(int dtype, const void* grad, const void* w, int64_t A,
                                       int64_t M, int64_t B, const void* u, const void* v,
                                       const void* sigma, void* out, void* workspace, void* stream);
}
