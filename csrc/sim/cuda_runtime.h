// Stands in for CUDA's cuda_runtime.h when scripts/build_cuda_sim.py compiles csrc/cuda/*.cu as
// host C++ (issue 15): the kernel files include <cuda_runtime.h> unchanged and get the harness.
#pragma once
#include "gankern/cuda_sim.h"
