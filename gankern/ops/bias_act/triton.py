"""Triton backend of gk.ops.bias_act: one elementwise kernel for the forward, the gradient and
the gradient's derivative (MODE), the activation a constexpr so each variant is branch-free.

The bias index of flat offset i is (i // inner) % C with inner = x.stride(dim): true for every
dense layout, so channels_last tensors are processed in their own memory order and kept.
A float64 call reads alpha/gain/clamp from memory since Triton passes Python floats as float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._device_guard import device_consts, on_tensor_device
from .._triton_helpers import cast_out

_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
       torch.bfloat16: tl.bfloat16}
BLOCK = 1024


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _expm1(x):
    """exp(x) - 1 without cancellation near 0 (Kahan: (u - 1) * x / log(u), u = exp(x)).

    Triton has no portable expm1; exp(x) - 1 loses every digit for |x| below ~1e-7 in fp32,
    which made tanh(1e-12) come out as 0 instead of 1e-12."""
    u = tl.exp(x)
    um1 = u - 1.0
    # u == 0 (x very negative): log(u) = -inf would turn the exact answer -1 into 0.
    r = tl.where(u == float("inf"), u, tl.where(u == 0.0, -1.0, um1 * x / tl.log(u)))
    return tl.where(um1 == 0.0, x, r)


@triton.jit
def _log1p(y):
    """log(1 + y) for y >= 0 without losing small y (Goldberg: log(u) * y / (u - 1), u = 1 + y)."""
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * y / (u - 1.0))


@triton.jit
def _act(z, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    """act(z) for ORDER 0, act'(z) for 1, act''(z) for 2 (acts as in reference.ACTS)."""
    if ACT == 0:
        r = z if ORDER == 0 else (tl.full(z.shape, 1.0, z.dtype) if ORDER == 1 else tl.zeros_like(z))
    elif ACT == 1:
        if ORDER == 0:
            r = tl.where(z <= 0, 0.0, z)  # NaN takes z and stays NaN, as in torch
        elif ORDER == 1:
            r = tl.where(z > 0, 1.0, 0.0)
        else:
            r = tl.zeros_like(z)
    elif ACT == 2:
        if ORDER == 0:
            r = tl.where(z > 0, z, z * alpha)
        elif ORDER == 1:
            r = tl.where(z > 0, 1.0, alpha)
        else:
            r = tl.zeros_like(z)
    elif ACT == 3:
        # tanh from one exp of -2|z| (no overflow), sign restored.
        em1 = _expm1(-2.0 * tl.abs(z))  # tanh|z| = -expm1(-2|z|) / (2 + expm1(-2|z|))
        t = -em1 / (2.0 + em1)
        t = tl.where(z < 0, -t, t)
        if ORDER == 0:
            r = t
        elif ORDER == 1:
            r = 1.0 - t * t
        else:
            r = -2.0 * t * (1.0 - t * t)
    elif ACT == 4:
        s = _sigmoid(z)
        if ORDER == 0:
            r = s
        elif ORDER == 1:
            r = s * (1.0 - s)
        else:
            r = s * (1.0 - s) * (1.0 - 2.0 * s)
    elif ACT == 5:
        s = _sigmoid(z)
        if ORDER == 0:
            r = z * s
        elif ORDER == 1:
            r = s + z * s * (1.0 - s)
        else:
            r = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    elif ACT == 6:
        s = _sigmoid(z)
        linear = z > 20.0  # torch's softplus threshold
        if ORDER == 0:
            r = tl.where(linear, z, tl.maximum(z, 0.0) + _log1p(tl.exp(-tl.abs(z))))
        elif ORDER == 1:
            r = tl.where(linear, 1.0, s)
        else:
            r = tl.where(linear, 0.0, s * (1.0 - s))
    else:
        zn = tl.where(z > 0, 0.0, z)  # not tl.minimum: it would turn NaN into 0
        e = alpha * tl.exp(zn)
        if ORDER == 0:
            r = tl.where(z > 0, z, alpha * _expm1(zn))
        elif ORDER == 1:
            r = tl.where(z > 0, 1.0, e)
        else:
            r = tl.where(z > 0, 0.0, e)
    return r


@triton.jit
def _bias_act_kernel(x_ptr, b_ptr, dy_ptr, v_ptr, out_ptr, consts_ptr, n, C, inner,
                     alpha, gain, clamp, ACT: tl.constexpr, MODE: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, ACC: tl.constexpr,
                     OUT: tl.constexpr, FROM_PTR: tl.constexpr, INDEX32: tl.constexpr,
                     BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < n
    if FROM_PTR:
        alpha = tl.load(consts_ptr)
        gain = tl.load(consts_ptr + 1)
        clamp = tl.load(consts_ptr + 2)
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        if INDEX32:
            # The channel depends only on the offset modulo C*inner: one 64-bit modulo per
            # program, then 32-bit divide/modulo per element (a 64-bit one is a long software
            # routine on GPUs). The launcher sets INDEX32 when C*inner + BLOCK fits in 31 bits.
            r0 = (start % (tl.cast(C, tl.int64) * inner)).to(tl.int32)
            ch = ((r0 + tl.arange(0, BLOCK)) // tl.cast(inner, tl.int32)) % tl.cast(C, tl.int32)
        else:
            ch = (offs // inner) % C
        z += tl.load(b_ptr + ch, mask=mask, other=0.0).to(ACC)
    if MODE == 0:
        u = _act(z, alpha, ACT, 0) * gain
        if HAS_CLAMP:
            # min/max return the non-NaN operand: keep NaN a NaN, as torch.clamp does.
            u = tl.where(u != u, u, tl.minimum(tl.maximum(u, -clamp), clamp))
        out = u
    else:
        g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC) * gain
        if MODE == 2:
            g *= tl.load(v_ptr + offs, mask=mask, other=0.0).to(ACC)
        out = g * _act(z, alpha, ACT, MODE)
        if HAS_CLAMP:
            # torch.clamp passes the gradient where -clamp <= u <= clamp (inclusive).
            u = _act(z, alpha, ACT, 0) * gain
            out = tl.where((u >= -clamp) & (u <= clamp), out, 0.0)
    tl.store(out_ptr + offs, cast_out(out, OUT), mask=mask)


@on_tensor_device
def bias_act_triton(mode: int, act: int, x, b, dy, v, alpha: float, gain: float, clamp, inner: int,
                    channels: int):
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    has_clamp = clamp is not None
    c = float(clamp) if has_clamp else 0.0
    from_ptr = acc == torch.float64
    consts = device_consts((float(alpha), float(gain), c), acc, x.device) if from_ptr else x
    _bias_act_kernel[(triton.cdiv(n, BLOCK),)](
        x, b if b is not None else x, dy if dy is not None else x, v if v is not None else x, out,
        consts, n, channels, inner, float(alpha), float(gain), c, ACT=act, MODE=mode,
        HAS_BIAS=b is not None, HAS_CLAMP=has_clamp, ACC=_TL[acc], OUT=_TL[x.dtype],
        FROM_PTR=from_ptr, INDEX32=channels * inner + BLOCK < 2**31, BLOCK=BLOCK, num_warps=4)
    return out
