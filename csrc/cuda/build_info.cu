// What this build of the CUDA kernels can run on, asked once at load time by gankern._native.
//
// Why: a fatbin holds SASS for some architectures and PTX for others; a GPU with neither (or a
// driver older than the PTX or the runtime) fails every launch with "no kernel image". Python
// asks these before the cuda backend is ever picked, so impl="auto" can fall back to Triton
// with one warning instead of failing inside a training step.
#include <cuda_runtime.h>

#include "gankern/launch.h"

#ifndef GANKERN_CUDA_SASS
#define GANKERN_CUDA_SASS ""
#endif
#ifndef GANKERN_CUDA_PTX
#define GANKERN_CUDA_PTX ""
#endif

namespace {
// The smallest kernel there is: cudaFuncGetAttributes on it fails exactly when this fatbin has
// no image the present GPU and driver can load, which is what every other kernel would hit.
__global__ void probe_kernel(int* out) {
  if (out) *out = 0;
}
}  // namespace

// Comma-separated compute capabilities with SASS in the fatbin, e.g. "80,90" (set by setup.py).
extern "C" const char* gankern_cuda_sass_archs() { return GANKERN_CUDA_SASS; }

// Comma-separated compute capabilities with embedded PTX (JIT-compiled by newer GPUs' drivers).
extern "C" const char* gankern_cuda_ptx_archs() { return GANKERN_CUDA_PTX; }

// CUDART_VERSION of the toolkit this was compiled with (e.g. 13000 for 13.0).
extern "C" int gankern_cuda_built_runtime_version() {
#if defined(CUDART_VERSION)
  return CUDART_VERSION;
#else  // the host harness (csrc/sim) has no toolkit version of its own
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
#endif
}

// The installed driver's CUDA version (e.g. 13000), 0 when there is no driver.
extern "C" int gankern_cuda_driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

// cudaSuccess when the current device can load this build's kernels, else the CUDA error code
// (cudaErrorNoKernelImageForDevice, cudaErrorInsufficientDriver, cudaErrorUnsupportedPtxVersion).
extern "C" int gankern_cuda_probe_current_device() {
  cudaFuncAttributes attr;
  cudaError_t err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (err != cudaSuccess) cudaGetLastError();  // clear it: later launches must not see it
  return int(err);
}
