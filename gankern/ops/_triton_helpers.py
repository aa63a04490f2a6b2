"""Small @triton.jit helpers shared by the Triton kernels of every op.

cast_out exists because Triton's interpreter (how the tests run kernels on CPU) truncates
float32 -> bfloat16, while GPUs round to nearest even. Rounding by integer arithmetic gives the
same bits on both, so a kernel tested on the CPU is the kernel that runs on the GPU.
"""

import triton
import triton.language as tl


@triton.jit
def to_bf16_rne(x):
    """float32 -> bfloat16, round to nearest even, NaN stays NaN."""
    u = x.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = tl.where(x != x, 0x7FC0, r)
    return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def cast_out(x, DTYPE: tl.constexpr):
    """Cast an fp32/fp64 accumulator to the output dtype with round-to-nearest-even."""
    if DTYPE == tl.bfloat16:
        return to_bf16_rne(x.to(tl.float32))
    else:
        return x.to(DTYPE)
