// gankern._C: one pybind11 binding per launcher. Pointers arrive as integers from
// gankern/_native.py, the only caller, which has validated every tensor behind them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "gankern/ema.h"

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gankern native kernels (torch-free; called only through gankern._native)";
#ifdef GANKERN_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.def("cuda_runtime_version", &gankern_cuda_runtime_version);
#else
  m.attr("cuda_compiled") = false;
#endif
  m.def("ema_update_cpu", &ema_update_cpu);
#ifdef GANKERN_WITH_CUDA
  m.def("ema_update_cuda", &ema_update_cuda);
#endif
}
