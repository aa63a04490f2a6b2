// gankern._C: one pybind11 binding per launcher. Pointers arrive as integers from
// gankern/_native.py, the only caller, which has validated every tensor behind them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "gankern/build_info.h"  // gpu
#include "gankern/index32.h"  // gpu2
#include "gankern/ema.h"
#include "gankern/ema_multi.h"  // ema
#include "gankern/bias_act.h"  // gp
#include "gankern/norm_penalty.h"  // gp
#include "gankern/spectral_norm.h"  // sn

namespace py = pybind11;
using Ptrs = std::vector<uintptr_t>;
using Sizes = std::vector<int64_t>;

namespace {

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

std::vector<void*> as_ptrs(const Ptrs& ps) {
  std::vector<void*> out(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) out[i] = as_ptr(ps[i]);
  return out;
}

void check_cpu(int code, const char* op) {
  if (code != 0) throw std::invalid_argument(std::string(op) + ": unsupported dtype combination");
}

#ifdef GANKERN_WITH_CUDA
void check_cuda(int code, const char* op) {
  if (code != 0) throw std::runtime_error(std::string(op) + ": " + gankern_cuda_error_string(code));
}
#endif

void ema_update_cpu(const Ptrs& shadow, const Ptrs& params, const Sizes& numel, int sd, int pd,
                    double weight, uintptr_t weight_ptr) {
  auto s = as_ptrs(shadow), p = as_ptrs(params);
  py::gil_scoped_release nogil;
  check_cpu(gankern::ema_update_cpu(int64_t(s.size()), s.data(), p.data(), numel.data(), sd, pd,
                                    weight, static_cast<const float*>(as_ptr(weight_ptr))),
            "ema_update_");
}

#ifdef GANKERN_WITH_CUDA
void ema_update_cuda(const Ptrs& shadow, const Ptrs& params, const Sizes& numel, int sd, int pd,
                     double weight, uintptr_t weight_ptr, uintptr_t stream) {
  auto s = as_ptrs(shadow), p = as_ptrs(params);
  check_cuda(gankern_ema_update_cuda(int64_t(s.size()), s.data(), p.data(), numel.data(), sd, pd,
                                     weight, static_cast<const float*>(as_ptr(weight_ptr)),
                                     as_ptr(stream)),
             "ema_update_");
}
#endif

// --- ema_update_multi_ (ema): shadow holds K * len(params) pointers, shadow-major ---
void ema_update_multi_cpu(const Ptrs& shadow, const Ptrs& params, const Sizes& numel, int64_t k,
                          int sd, int pd, const std::vector<double>& weights, uintptr_t weight_ptr) {
  auto s = as_ptrs(shadow), p = as_ptrs(params);
  py::gil_scoped_release nogil;
  check_cpu(gankern::ema_update_multi_cpu(int64_t(p.size()), k, s.data(), p.data(), numel.data(), sd,
                                          pd, weights.data(),
                                          static_cast<const float*>(as_ptr(weight_ptr))),
            "ema_update_multi_");
}

#ifdef GANKERN_WITH_CUDA
void ema_update_multi_cuda(const Ptrs& shadow, const Ptrs& params, const Sizes& numel, int64_t k,
                           int sd, int pd, const std::vector<double>& weights, uintptr_t weight_ptr,
                           uintptr_t stream) {
  auto s = as_ptrs(shadow), p = as_ptrs(params);
  check_cuda(gankern_ema_update_multi_cuda(int64_t(p.size()), k, s.data(), p.data(), numel.data(),
                                           sd, pd, weights.data(),
                                           static_cast<const float*>(as_ptr(weight_ptr)),
                                           as_ptr(stream)),
             "ema_update_multi_");
}
#endif

// --- norm_penalty (gp) ---
void norm_penalty_cpu(uintptr_t grads, uintptr_t norms, uintptr_t penalty, int64_t B, int64_t N,
                      int dtype, double center, double weight) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::norm_penalty_cpu(as_ptr(grads), as_ptr(norms), as_ptr(penalty), B, N, dtype,
                                      center, weight), "norm_penalty");
}

void norm_penalty_backward_cpu(uintptr_t gp, uintptr_t gn, uintptr_t grads, uintptr_t norms,
                               uintptr_t out, int64_t B, int64_t N, int dtype, double center,
                               double weight) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::norm_penalty_backward_cpu(as_ptr(gp), as_ptr(gn), as_ptr(grads), as_ptr(norms),
                                               as_ptr(out), B, N, dtype, center, weight),
            "norm_penalty_backward");
}

#ifdef GANKERN_WITH_CUDA
void norm_penalty_cuda(uintptr_t grads, uintptr_t norms, uintptr_t penalty, int64_t B, int64_t N,
                       int dtype, double center, double weight, uintptr_t workspace, uintptr_t stream) {
  check_cuda(gankern_norm_penalty_cuda(as_ptr(grads), as_ptr(norms), as_ptr(penalty), B, N, dtype,
                                       center, weight, as_ptr(workspace), as_ptr(stream)), "norm_penalty");
}

void norm_penalty_backward_cuda(uintptr_t gp, uintptr_t gn, uintptr_t grads, uintptr_t norms,
                                uintptr_t out, int64_t B, int64_t N, int dtype, double center,
                                double weight, uintptr_t stream) {
  check_cuda(gankern_norm_penalty_backward_cuda(as_ptr(gp), as_ptr(gn), as_ptr(grads), as_ptr(norms),
                                                as_ptr(out), B, N, dtype, center, weight,
                                                as_ptr(stream)), "norm_penalty_backward");
}
#endif
// --- end norm_penalty (gp) ---

// --- bias_act (gp) ---
void bias_act_cpu(int mode, int act, uintptr_t x, uintptr_t bias, uintptr_t dy, uintptr_t v,
                  uintptr_t out, int64_t n, int64_t channels, int64_t inner, int dtype, double alpha,
                  double gain, double clamp, bool has_clamp) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::bias_act_cpu(mode, act, as_ptr(x), as_ptr(bias), as_ptr(dy), as_ptr(v), as_ptr(out),
                                  n, channels, inner, dtype, alpha, gain, clamp, has_clamp),
            "bias_act");
}

void bias_act_grad_db_cpu(int act, uintptr_t x, uintptr_t bias, uintptr_t dy, uintptr_t out, uintptr_t db,
                          int64_t n, int64_t channels, int64_t inner, int dtype, double alpha, double gain,
                          double clamp, bool has_clamp) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::bias_act_grad_db_cpu(1, act, as_ptr(x), as_ptr(bias), as_ptr(dy), nullptr, as_ptr(out),
                                          as_ptr(db), n, channels, inner, dtype, alpha, gain, clamp,
                                          has_clamp),
            "bias_act_grad_db");
}

#ifdef GANKERN_WITH_CUDA
void bias_act_cuda(int mode, int act, uintptr_t x, uintptr_t bias, uintptr_t dy, uintptr_t v,
                   uintptr_t out, int64_t n, int64_t channels, int64_t inner, int dtype, double alpha,
                   double gain, double clamp, bool has_clamp, uintptr_t stream) {
  check_cuda(gankern_bias_act_cuda(mode, act, as_ptr(x), as_ptr(bias), as_ptr(dy), as_ptr(v), as_ptr(out),
                                   n, channels, inner, dtype, alpha, gain, clamp, has_clamp,
                                   as_ptr(stream)),
             "bias_act");
}
#endif
// --- end bias_act (gp) ---

// --- spectral_norm (sn) ---
void sn_power_iteration_cpu(int dtype, uintptr_t w, int64_t A, int64_t M, int64_t B, uintptr_t u,
                            uintptr_t v, int64_t n_iter, double eps, uintptr_t sigma,
                            uintptr_t u_copy, uintptr_t v_copy) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::sn_power_iteration_cpu(dtype, as_ptr(w), A, M, B, as_ptr(u), as_ptr(v), n_iter,
                                            eps, as_ptr(sigma), as_ptr(u_copy), as_ptr(v_copy)),
            "sn_power_iteration");
}

void sn_sigma_cpu(int dtype, uintptr_t w, int64_t A, int64_t M, int64_t B, uintptr_t u, uintptr_t v,
                  uintptr_t sigma) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::sn_sigma_cpu(dtype, as_ptr(w), A, M, B, as_ptr(u), as_ptr(v), as_ptr(sigma)),
            "sn_sigma");
}

void sn_scale_cpu(int dtype, uintptr_t w, int64_t numel, uintptr_t sigma, uintptr_t out) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::sn_scale_cpu(dtype, as_ptr(w), numel, as_ptr(sigma), as_ptr(out)), "sn_scale");
}

void sn_normalize_backward_cpu(int dtype, uintptr_t g, uintptr_t w, int64_t A, int64_t M, int64_t B,
                               uintptr_t u, uintptr_t v, uintptr_t sigma, uintptr_t out) {
  py::gil_scoped_release nogil;
  check_cpu(gankern::sn_normalize_backward_cpu(dtype, as_ptr(g), as_ptr(w), A, M, B, as_ptr(u),
                                               as_ptr(v), as_ptr(sigma), as_ptr(out)),
            "sn_normalize_backward");
}

#ifdef GANKERN_WITH_CUDA
void sn_power_iteration_cuda(int dtype, uintptr_t w, int64_t A, int64_t M, int64_t B, uintptr_t u,
                             uintptr_t v, int64_t n_iter, double eps, uintptr_t sigma,
                             uintptr_t u_copy, uintptr_t v_copy, uintptr_t work, uintptr_t stream) {
  check_cuda(gankern_sn_power_iteration_cuda(dtype, as_ptr(w), A, M, B, as_ptr(u), as_ptr(v), n_iter,
                                             eps, as_ptr(sigma), as_ptr(u_copy), as_ptr(v_copy),
                                             as_ptr(work), as_ptr(stream)),
             "sn_power_iteration");
}

void sn_sigma_cuda(int dtype, uintptr_t w, int64_t A, int64_t M, int64_t B, uintptr_t u, uintptr_t v,
                   uintptr_t sigma, uintptr_t work, uintptr_t stream) {
  check_cuda(gankern_sn_sigma_cuda(dtype, as_ptr(w), A, M, B, as_ptr(u), as_ptr(v), as_ptr(sigma),
                                   as_ptr(work), as_ptr(stream)),
             "sn_sigma");
}

void sn_scale_cuda(int dtype, uintptr_t w, int64_t numel, uintptr_t sigma, uintptr_t out,
                   uintptr_t stream) {
  check_cuda(gankern_sn_scale_cuda(dtype, as_ptr(w), numel, as_ptr(sigma), as_ptr(out), as_ptr(stream)),
             "sn_scale");
}

void sn_normalize_backward_cuda(int dtype, uintptr_t g, uintptr_t w, int64_t A, int64_t M, int64_t B,
                                uintptr_t u, uintptr_t v, uintptr_t sigma, uintptr_t out,
                                uintptr_t work, uintptr_t stream) {
  check_cuda(gankern_sn_normalize_backward_cuda(dtype, as_ptr(g), as_ptr(w), A, M, B, as_ptr(u),
                                                as_ptr(v), as_ptr(sigma), as_ptr(out), as_ptr(work),
                                                as_ptr(stream)),
             "sn_normalize_backward");
}
#endif
// --- end spectral_norm (sn) ---

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gankern native kernels (torch-free; called only through gankern._native)";
#ifdef GANKERN_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.def("cuda_runtime_version", &gankern_cuda_runtime_version);
  // gpu: what the fatbin holds and what it needs, for gankern/_cuda_compat.py
  m.def("cuda_build_info", [] {
    py::dict info;
    info["sass"] = std::string(gankern_cuda_sass_archs());
    info["ptx"] = std::string(gankern_cuda_ptx_archs());
    info["runtime_version"] = gankern_cuda_built_runtime_version();
    return info;
  });
  m.def("cuda_driver_version", &gankern_cuda_driver_version);
  m.def("cuda_probe_current_device", &gankern_cuda_probe_current_device);
#else
  m.attr("cuda_compiled") = false;
#endif
  m.def("ema_update_cpu", &ema_update_cpu);
  m.def("ema_update_multi_cpu", &ema_update_multi_cpu);  // ema
#ifdef GANKERN_WITH_CUDA
  m.def("ema_update_cuda", &ema_update_cuda);
  m.def("ema_update_multi_cuda", &ema_update_multi_cuda);  // ema
#endif
  // --- gp ---
  m.def("norm_penalty_cpu", &norm_penalty_cpu);
  m.def("norm_penalty_backward_cpu", &norm_penalty_backward_cpu);
  m.def("bias_act_cpu", &bias_act_cpu);
  m.def("bias_act_grad_db_cpu", &bias_act_grad_db_cpu);
#ifdef GANKERN_WITH_CUDA
  m.def("norm_penalty_workspace_elems", &gankern_norm_penalty_workspace_elems);
  m.def("norm_penalty_cuda", &norm_penalty_cuda);
  m.def("norm_penalty_backward_cuda", &norm_penalty_backward_cuda);
  m.def("bias_act_cuda", &bias_act_cuda);
  m.def("set_index32_limit", &gankern_set_index32_limit);  // tests: force the 64-bit index kernels
#endif
  // --- end gp ---
  // --- sn ---
  m.def("sn_power_iteration_cpu", &sn_power_iteration_cpu);
  m.def("sn_sigma_cpu", &sn_sigma_cpu);
  m.def("sn_scale_cpu", &sn_scale_cpu);
  m.def("sn_normalize_backward_cpu", &sn_normalize_backward_cpu);
#ifdef GANKERN_WITH_CUDA
  m.def("sn_workspace_elems", &gankern_sn_workspace_elems);
  m.def("sn_power_iteration_cuda", &sn_power_iteration_cuda);
  m.def("sn_sigma_cuda", &sn_sigma_cuda);
  m.def("sn_scale_cuda", &sn_scale_cuda);
  m.def("sn_normalize_backward_cuda", &sn_normalize_backward_cuda);
#endif
  // --- end sn ---
}
