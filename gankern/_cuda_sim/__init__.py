"""Test-only home of the CUDA host harness build (issue 15): `_C` here is csrc/bindings.cpp with
csrc/cuda/*.cu compiled as host C++ against csrc/include/gankern/cuda_sim.h, built only by
scripts/build_cuda_sim.py (never by a user install). gankern/_native.py loads it for the
backend impl="cuda_sim", which runs the CUDA kernels' source on CPU tensors."""
