// What the CUDA part of gankern._C was built for (csrc/cuda/build_info.cu).
#pragma once

extern "C" {
const char* gankern_cuda_sass_archs();
const char* gankern_cuda_ptx_archs();
int gankern_cuda_built_runtime_version();
int gankern_cuda_driver_version();
int gankern_cuda_probe_current_device();
}
