// The one way csrc/cuda starts a kernel: gankern::launch_kernel(kernel, grid, block, smem, stream, args...).
//
// Why not `kernel<<<grid, block, smem, stream>>>(args...)` directly: the triple-chevron syntax
// exists only under nvcc, and the CUDA code must also compile as host C++ for the test harness
// (csrc/sim/, issue 15), which runs the same kernel source on CPU tensors. Under nvcc this is
// exactly the chevron launch; under the harness (GANKERN_CUDA_SIM) the harness header defines
// gankern::launch_kernel to run the grid's blocks and threads on the host. A function, not a macro,
// so a template kernel (`k<A, B, T>`, commas and all) passes as one argument. Arguments convert
// to the kernel's parameter types as they would at a chevron launch.
#pragma once

#if defined(GANKERN_CUDA_SIM)
#include "gankern/cuda_sim.h"
#else
#include <cuda_runtime.h>

#include <cstddef>

namespace gankern {

template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(static_cast<Params>(args)...);
}

}  // namespace gankern
#endif
