"""Triton backend of gk.ops.norm_penalty: per-sample norms, the penalty, the analytic backward.

Forward: one program per sample streams its row once (grads are read exactly once) and stores
its norm; one more program reduces the B norms to the penalty (deterministic, no atomics).
Backward: grads * coef[row], one read and one write per element, coef computed per program from
the saved norm. A float64 call reads center/weight from memory since Triton passes Python
floats as float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._device_guard import device_consts, on_tensor_device
from .._triton_helpers import cast_out

_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
       torch.bfloat16: tl.bfloat16}
ROW_BLOCK = 2048
ELEM_BLOCK = 2048


@triton.jit
def _row_norm_kernel(g_ptr, norms_ptr, N, ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = g_ptr + row * N
    # Squares summed in float64 whatever ACC is: in float32 they under- and overflow for
    # gradients below ~1e-19 or above ~1e19 (a norm of 1e-30 came out 0), where the CPU kernel
    # and torch stay exact. The kernel is memory-bound, so the wider adds cost no time.
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(base + offs, mask=offs < N, other=0.0).to(tl.float64)
        acc += v * v
    tl.store(norms_ptr + row, tl.sqrt(tl.sum(acc, axis=0)).to(ACC))


@triton.jit
def _penalty_kernel(norms_ptr, out_ptr, consts_ptr, B, center, scale, ACC: tl.constexpr,
                    FROM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    if FROM_PTR:
        center = tl.load(consts_ptr)
        scale = tl.load(consts_ptr + 1)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, B, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < B
        d = tl.load(norms_ptr + offs, mask=mask, other=0.0) - center
        acc += tl.where(mask, d * d, 0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0) * scale)


@triton.jit
def _backward_kernel(g_ptr, norms_ptr, gp_ptr, gn_ptr, out_ptr, consts_ptr, N, center, scale,
                     ACC: tl.constexpr, OUT: tl.constexpr, FROM_PTR: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    if FROM_PTR:
        center = tl.load(consts_ptr)
        scale = tl.load(consts_ptr + 1)
    n = tl.load(norms_ptr + row)
    # 1/n is taken as 0 at n == 0: the row is all zeros there, so its gradient is 0, not NaN.
    inv = tl.where(n > 0, 1.0 / tl.where(n > 0, n, 1.0), 0.0)
    s = tl.load(gp_ptr).to(ACC) * scale
    coef = s + inv * (tl.load(gn_ptr + row).to(ACC) - s * center)
    mask = offs < N
    g = tl.load(g_ptr + row * N + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + row * N + offs, cast_out(g * coef, OUT), mask=mask)


def _consts(center, scale, acc, device):
    if acc == torch.float64:
        # Cached per (values, device): no host-to-device copy per call (see _device_guard).
        return device_consts((float(center), float(scale)), acc, device), True
    return None, False


@on_tensor_device
def norm_penalty_triton(grads: torch.Tensor, center: float, weight: float):
    b = grads.shape[0]
    n = grads.numel() // b
    acc = torch.float64 if grads.dtype == torch.float64 else torch.float32
    norms = torch.empty(b, dtype=acc, device=grads.device)
    penalty = torch.empty((), dtype=acc, device=grads.device)
    _row_norm_kernel[(b,)](grads, norms, n, ACC=_TL[acc], BLOCK=ROW_BLOCK, num_warps=8)
    consts, from_ptr = _consts(center, weight / b, acc, grads.device)
    _penalty_kernel[(1,)](norms, penalty, consts if from_ptr else norms, b, float(center), weight / b,
                          ACC=_TL[acc], FROM_PTR=from_ptr, BLOCK=1024)
    return penalty, norms


@on_tensor_device
def norm_penalty_backward_triton(grad_penalty, grad_norms, grads, norms, center: float, weight: float):
    b = grads.shape[0]
    n = grads.numel() // b
    acc = norms.dtype
    out = torch.empty_like(grads)
    consts, from_ptr = _consts(center, 2.0 * weight / b, acc, grads.device)
    grid = (b, triton.cdiv(n, ELEM_BLOCK))
    _backward_kernel[grid](grads, norms, grad_penalty, grad_norms, out, consts if from_ptr else norms,
                           n, float(center), 2.0 * weight / b, ACC=_TL[acc], OUT=_TL[grads.dtype],
                           FROM_PTR=from_ptr, BLOCK=ELEM_BLOCK, num_warps=4)
    return out
