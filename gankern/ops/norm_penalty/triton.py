"""Triton backend of gk.ops.norm_penalty: per-sample norms, the penalty, the analytic backward.

Forward: one program per sample streams its row once (grads are read exactly once) and stores
its norm (a small batch of long rows splits each row over several programs first); one more program reduces the B norms to the penalty (deterministic, no atomics).
Backward: grads * coef[row], one read and one write per element, coef computed per program from
the saved norm. Center and weight are read from a float64 tensor since Triton passes Python
floats as float32. Every finite input whose exact result is representable gives it (issue 13):
denormal and huge rows take a rescaled pass instead of overflowing (see _row_norm_kernel and
_backward_kernel); that branch is per row, so ordinary rows pay nothing for it.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from .._device_guard import device_consts, on_tensor_device
from .._triton_helpers import cast_out

_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
       torch.bfloat16: tl.bfloat16}
ROW_BLOCK = 2048
ELEM_BLOCK = 2048


def _f64_bits(x: float) -> int:
    """A float64 constant as int64 bits: Triton passes and folds Python floats as float32, in
    which 2^600 or float64's smallest normal do not exist."""
    return struct.unpack("<q", struct.pack("<d", x))[0]


# Power-of-two rescaling of a float64 row whose squares leave double's range (exact: it only
# moves exponents; |x| <= 2^1024 -> 2^424, 2^-1074 -> 2^-474 whose square is still normal).
_UP, _DOWN, _TINY_SUMSQ = _f64_bits(2.0 ** 600), _f64_bits(2.0 ** -600), _f64_bits(2.0 ** -900)


@triton.jit
def _f64(bits: tl.constexpr):
    return tl.full([], bits, tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _wide(v):
    """v as float64; bfloat16 through its bits, exact for denormals too (Triton's interpreter
    flushes bfloat16 denormals in its own cast; on GPUs the two agree)."""
    if v.dtype == tl.bfloat16:
        bits = v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16
        return bits.to(tl.float32, bitcast=True).to(tl.float64)
    else:
        return v.to(tl.float64)


@triton.jit
def _row_sumsq(base, N, scale, BLOCK: tl.constexpr):
    # Squares summed in float64 whatever the dtype: in float32 they under- and overflow for
    # gradients below ~1e-19 or above ~1e19 (a norm of 1e-30 came out 0), where the CPU kernel
    # stays exact. The kernel is memory-bound, so the wider adds cost no time.
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = _wide(tl.load(base + offs, mask=offs < N, other=0.0)) * scale
        acc += v * v
    return tl.sum(acc, axis=0)


@triton.jit
def _row_part_kernel(g_ptr, part_ptr, N, SLICE, BLOCK: tl.constexpr):
    # A small batch has fewer rows than the GPU has SMs: each row is cut into n_slices slices,
    # one program each, whose float64 sums of squares _row_norm_kernel adds in a fixed order.
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1).to(tl.int64) * SLICE
    part = _row_sumsq(g_ptr + row * N + start, tl.minimum(N - start, SLICE), 1.0, BLOCK)
    tl.store(part_ptr + row * tl.num_programs(1) + tl.program_id(1), part)


@triton.jit
def _row_norm_kernel(g_ptr, norms_ptr, n64_ptr, part_ptr, n_slices, N, ACC: tl.constexpr,
                     RESCALE: tl.constexpr, UP: tl.constexpr, DOWN: tl.constexpr,
                     TINY_SUMSQ: tl.constexpr, FROM_PARTS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = g_ptr + row * N
    if FROM_PARTS:
        total = tl.load(part_ptr + row * n_slices)
        for j in range(1, n_slices):
            total += tl.load(part_ptr + row * n_slices + j)
    else:
        total = _row_sumsq(base, N, 1.0, BLOCK)
    n = tl.sqrt(total)
    if RESCALE:  # float64 rows only: narrower types square into double's normal range
        if total * 0.0 != 0.0:  # inf (or NaN, which stays NaN)
            n = tl.sqrt(_row_sumsq(base, N, _f64(DOWN), BLOCK)) * _f64(UP)
        elif total < _f64(TINY_SUMSQ):
            n = tl.sqrt(_row_sumsq(base, N, _f64(UP), BLOCK)) * _f64(DOWN)
    tl.store(n64_ptr + row, n)
    tl.store(norms_ptr + row, n.to(ACC))


@triton.jit
def _penalty_kernel(n64_ptr, out_ptr, consts_ptr, B, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # From the float64 norms, in float64: a float32 norm of 1e39 is inf, its weighted square
    # need not be. consts = (center, weight / B, sqrt(weight / B)).
    center = tl.load(consts_ptr)
    q = tl.load(consts_ptr + 1)
    root_q = tl.load(consts_ptr + 2)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    inside = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, B, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < B
        d = tl.load(n64_ptr + offs, mask=mask, other=0.0) - center
        acc += tl.where(mask, d * d, 0.0)
        e = d * root_q
        inside += tl.where(mask, e * e, 0.0)
    p = tl.sum(acc, axis=0) * q
    p_inside = tl.sum(inside, axis=0)
    # Squares that overflowed although the weighted mean does not: the weight inside them.
    p = tl.where((p * 0.0 != 0.0) & (p == p) & (p_inside * 0.0 == 0.0), p_inside, p)
    tl.store(out_ptr, p.to(ACC))


@triton.jit
def _backward_kernel(g_ptr, norms_ptr, gp_ptr, gn_ptr, out_ptr, consts_ptr, N,
                     OUT: tl.constexpr, A_MIN: tl.constexpr, A_MAX: tl.constexpr, BLOCK: tl.constexpr):
    """out = s*g + (gn - s*c) * g/n per row, s = gp * 2w/B, in float64. consts = (c, 2w/B).

    A row whose saved norm is ordinary (normal and finite in its dtype) uses one coefficient
    s + (gn - s*c)/n; the others (denormal: 1/n overflows and the norm has lost bits; inf; 0)
    form g/n as (g/m) / ||g/m||, m = max |g| of the row, as the reference does."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    base = g_ptr + row * N
    center = tl.load(consts_ptr)
    s = tl.load(gp_ptr).to(tl.float64) * tl.load(consts_ptr + 1)
    rest = tl.load(gn_ptr + row).to(tl.float64) - s * center
    n = tl.load(norms_ptr + row).to(tl.float64)
    a_max = _f64(A_MAX)
    coef = s + rest / tl.where(n > 0.0, n, 1.0)
    ordinary = (n >= _f64(A_MIN)) & (n <= a_max) & (tl.abs(coef) <= a_max)
    mask = offs < N
    g = _wide(tl.load(base + offs, mask=mask, other=0.0))
    if ordinary:
        out = g * coef
    else:
        m = tl.zeros([BLOCK], dtype=tl.float64)
        nans = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(0, N, BLOCK):
            o = start + tl.arange(0, BLOCK)
            v = tl.abs(_wide(tl.load(base + o, mask=o < N, other=0.0)))
            nans += tl.where(v != v, 1, 0)
            m = tl.where(v > m, v, m)
        m_row = tl.max(m, axis=0)
        # zero, infinite or NaN rows divide by 1, as the reference does
        bad = (tl.sum(nans, axis=0) > 0) | (m_row <= 0.0) | (m_row * 0.0 != 0.0)
        m_row = tl.where(bad, 1.0, m_row)
        r2 = tl.zeros([BLOCK], dtype=tl.float64)
        for start in range(0, N, BLOCK):
            o = start + tl.arange(0, BLOCK)
            u = _wide(tl.load(base + o, mask=o < N, other=0.0)) / m_row  # 1/m may overflow
            r2 += u * u
        r = tl.sqrt(tl.sum(r2, axis=0))
        r = tl.where(r > 0.0, r, 1.0)
        out = s * g + rest * ((g / m_row) / r)
    tl.store(out_ptr + row * N + offs, cast_out(out, OUT), mask=mask)


# Rows are split until the batch makes ~2 programs per SM of a 132-SM GPU, each slice at least
# _MIN_SLICE elements (a program's fixed cost stays small next to its reads).
_TARGET_PROGRAMS = 264
_MIN_SLICE = 16384


def _row_slices(b: int, n: int) -> int:
    return max(1, min(triton.cdiv(_TARGET_PROGRAMS, b), n // _MIN_SLICE))


def _consts(values, device):
    # Cached per (values, device): no host-to-device copy per call (see _device_guard).
    return device_consts(tuple(float(v) for v in values), torch.float64, device)


@on_tensor_device
def norm_penalty_triton(grads: torch.Tensor, center: float, weight: float):
    b = grads.shape[0]
    n = grads.numel() // b
    acc = torch.float64 if grads.dtype == torch.float64 else torch.float32
    norms = torch.empty(b, dtype=acc, device=grads.device)
    n64 = torch.empty(b, dtype=torch.float64, device=grads.device)
    penalty = torch.empty((), dtype=acc, device=grads.device)
    n_slices = _row_slices(b, n)
    parts = n64
    if n_slices > 1:
        parts = torch.empty(b * n_slices, dtype=torch.float64, device=grads.device)
        slice_len = triton.cdiv(triton.cdiv(n, n_slices), ROW_BLOCK) * ROW_BLOCK
        n_slices = triton.cdiv(n, slice_len)
        _row_part_kernel[(b, n_slices)](grads, parts, n, slice_len, BLOCK=ROW_BLOCK, num_warps=8)
    _row_norm_kernel[(b,)](grads, norms, n64, parts, n_slices, n, ACC=_TL[acc],
                           RESCALE=grads.dtype == torch.float64, UP=_UP, DOWN=_DOWN,
                           TINY_SUMSQ=_TINY_SUMSQ, FROM_PARTS=n_slices > 1, BLOCK=ROW_BLOCK, num_warps=8)
    q = weight / b
    _penalty_kernel[(1,)](n64, penalty, _consts([center, q, q ** 0.5], grads.device), b, ACC=_TL[acc],
                          BLOCK=1024)
    return penalty, norms


@on_tensor_device
def norm_penalty_backward_triton(grad_penalty, grad_norms, grads, norms, center: float, weight: float):
    b = grads.shape[0]
    n = grads.numel() // b
    info = torch.finfo(norms.dtype)
    out = torch.empty_like(grads)
    grid = (b, triton.cdiv(n, ELEM_BLOCK))
    _backward_kernel[grid](grads, norms, grad_penalty, grad_norms, out,
                           _consts([center, 2.0 * weight / b], grads.device), n, OUT=_TL[grads.dtype],
                           A_MIN=_f64_bits(info.tiny), A_MAX=_f64_bits(info.max), BLOCK=ELEM_BLOCK,
                           num_warps=4)
    return out
