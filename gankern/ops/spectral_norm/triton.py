"""Triton backend of gankern's spectral norm: kernels, then plain launchers.

Power iteration, one pass over W per iteration: each program owns BLOCK_M rows of the (A, M, B)
view (reference.py); it computes t = W v for its rows, then, with those rows still in cache,
its partial s = W_rows^T (t / c), c = max |t| over its rows (so float32 cannot overflow). A one-program finalize kernel sums the partials (fixed order:
deterministic, no atomics), and sets u = t/||t||, v = normalize(s/||t||) and
sigma = ||W^T u|| (= u^T W v after the v update), so sigma needs no third pass.
The backward dW = G/sigma - (<G, W>/sigma^2) u v^T is a partial-sum kernel for <G, W> and one
elementwise kernel. Accumulation is in float32 (float64 for float64 weights).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import _native
from .._device_guard import on_tensor_device
from .._triton_helpers import cast_out

_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
       torch.bfloat16: tl.bfloat16}
BLOCK_M = 16
BLOCK_K = 128
BLOCK = 1024


@triton.jit
def _rows_kernel(w_ptr, v_ptr, t_ptr, part_ptr, scale_ptr, M, B, K,
                 ACC: tl.constexpr, WITH_PART: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    t = tl.zeros([BLOCK_M], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        # column k = a*B + b of row i lives at (a*M + i)*B + b
        offs = ((ks // B) * M * B + ks % B)[None, :] + (rows * B)[:, None]
        w = tl.load(w_ptr + offs, mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
        v = tl.load(v_ptr + ks, mask=k_ok, other=0.0).to(ACC)
        t += tl.sum(w * v[None, :], axis=1)
    tl.store(t_ptr + rows, t, mask=row_ok)
    if WITH_PART:
        # The partial is of W^T (t / c) with c = max|t| of these rows, stored beside it: the
        # float32 W^T t overflows for weights beyond ~1e19 (torch's float32 SN does too); the
        # finalize kernel multiplies c back in float64.
        c = tl.max(tl.abs(t), axis=0)
        c = tl.where(c > 0, c, 1.0)
        tl.store(scale_ptr + pid, c)
        t = t / c
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            offs = ((ks // B) * M * B + ks % B)[None, :] + (rows * B)[:, None]
            w = tl.load(w_ptr + offs, mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)
            tl.store(part_ptr + pid * K + ks, tl.sum(w * t[:, None], axis=0), mask=k_ok)


@triton.jit
def _finalize_kernel(t_ptr, part_ptr, scale_ptr, u_ptr, v_ptr, sigma_ptr, uc_ptr, vc_ptr, M, K, n_parts, eps,
                     DTYPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # The norms accumulate in float64 (one program, so it costs nothing): a float32 sum of
    # squares overflows for entries above ~1e19 and turned finite weights into NaN, where the
    # CPU and CUDA kernels (double norms) and torch stay finite.
    tt = tl.zeros([BLOCK], dtype=tl.float64)
    for m0 in range(0, M, BLOCK):
        ms = m0 + tl.arange(0, BLOCK)
        t = tl.load(t_ptr + ms, mask=ms < M, other=0.0).to(tl.float64)
        tt += t * t
    dt = tl.maximum(tl.sqrt(tl.sum(tt, axis=0)), eps)
    for m0 in range(0, M, BLOCK):
        ms = m0 + tl.arange(0, BLOCK)
        u = cast_out(tl.load(t_ptr + ms, mask=ms < M, other=0.0).to(tl.float64) / dt, DTYPE)
        tl.store(u_ptr + ms, u, mask=ms < M)
        tl.store(uc_ptr + ms, u, mask=ms < M)
    ww = tl.zeros([BLOCK], dtype=tl.float64)
    for k0 in range(0, K, BLOCK):
        ks = k0 + tl.arange(0, BLOCK)
        s = tl.zeros([BLOCK], dtype=tl.float64)
        for p in range(0, n_parts):
            s += tl.load(part_ptr + p * K + ks, mask=ks < K, other=0.0).to(tl.float64) * \
                tl.load(scale_ptr + p).to(tl.float64)
        w = s / dt  # W^T u
        ww += w * w
        tl.store(part_ptr + ks, w.to(ACC), mask=ks < K)  # row 0 is this chunk's own: safe to reuse
    nw = tl.sqrt(tl.sum(ww, axis=0))
    dw = tl.maximum(nw, eps)
    for k0 in range(0, K, BLOCK):
        ks = k0 + tl.arange(0, BLOCK)
        v = cast_out(tl.load(part_ptr + ks, mask=ks < K, other=0.0).to(tl.float64) / dw, DTYPE)
        tl.store(v_ptr + ks, v, mask=ks < K)
        tl.store(vc_ptr + ks, v, mask=ks < K)
    tl.store(sigma_ptr, cast_out(nw * nw / dw, DTYPE))


@triton.jit
def _dot_kernel(a_ptr, b_ptr, out_ptr, n, DTYPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=ACC)
    for i0 in range(0, n, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs, mask=offs < n, other=0.0).to(ACC)
        b = tl.load(b_ptr + offs, mask=offs < n, other=0.0).to(ACC)
        acc += a * b
    tl.store(out_ptr, cast_out(tl.sum(acc, axis=0), DTYPE))


@triton.jit
def _scale_kernel(w_ptr, sigma_ptr, out_ptr, n, DTYPE: tl.constexpr, ACC: tl.constexpr,
                  BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = tl.load(sigma_ptr).to(ACC)
    w = tl.load(w_ptr + offs, mask=mask).to(ACC)
    tl.store(out_ptr + offs, cast_out(w / s, DTYPE), mask=mask)


@triton.jit
def _partial_dot_kernel(a_ptr, b_ptr, part_ptr, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(part_ptr + tl.program_id(0), tl.sum(a * b, axis=0))


@triton.jit
def _sum_parts_kernel(part_ptr, out_ptr, n_parts, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # One program sums the partials of <G, W> in a fixed order (deterministic, no atomics);
    # each backward program then reads one scalar instead of every partial (which was
    # quadratic: n/BLOCK programs each reading n/BLOCK partials, ~1 GiB for a 4096^2 weight).
    acc = tl.zeros([BLOCK], dtype=ACC)
    for p0 in range(0, n_parts, BLOCK):
        ps = p0 + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + ps, mask=ps < n_parts, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


@triton.jit
def _backward_kernel(g_ptr, w_ptr, u_ptr, v_ptr, sigma_ptr, dot_ptr, out_ptr, M, B, n,
                     DTYPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    s = tl.load(sigma_ptr).to(ACC)
    c = tl.load(dot_ptr) / (s * s)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    i = (offs // B) % M
    k = (offs // (M * B)) * B + offs % B
    g = tl.load(g_ptr + offs, mask=mask).to(ACC)
    u = tl.load(u_ptr + i, mask=mask).to(ACC)
    v = tl.load(v_ptr + k, mask=mask).to(ACC)
    tl.store(out_ptr + offs, cast_out(g / s - c * u * v, DTYPE), mask=mask)


# -- launchers ---------------------------------------------------------------------------------
def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@on_tensor_device
def power_iteration_(weight, u, v, dim, n_iter, eps):
    a, m, b = _native.sn_check(weight, u, v, dim)
    k = a * b
    acc = _acc(weight.dtype)
    n_parts = triton.cdiv(m, BLOCK_M)
    t = torch.empty(m, dtype=acc, device=weight.device)
    part = torch.empty(n_parts, k, dtype=acc, device=weight.device)
    scales = torch.empty(n_parts, dtype=acc, device=weight.device)
    sigma = torch.empty((), dtype=weight.dtype, device=weight.device)
    u_copy, v_copy = torch.empty_like(u), torch.empty_like(v)
    for _ in range(n_iter):
        _rows_kernel[(n_parts,)](weight, v, t, part, scales, m, b, k, ACC=_TL[acc], WITH_PART=True,
                                 BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
        _finalize_kernel[(1,)](t, part, scales, u, v, sigma, u_copy, v_copy, m, k, n_parts, float(eps),
                               DTYPE=_TL[weight.dtype], ACC=_TL[acc], BLOCK=BLOCK)
    return sigma, u_copy, v_copy


@on_tensor_device
def sigma(weight, u, v, dim):
    a, m, b = _native.sn_check(weight, u, v, dim)
    acc = _acc(weight.dtype)
    t = torch.empty(m, dtype=acc, device=weight.device)
    out = torch.empty((), dtype=weight.dtype, device=weight.device)
    _rows_kernel[(triton.cdiv(m, BLOCK_M),)](weight, v, t, t, t, m, b, a * b, ACC=_TL[acc], WITH_PART=False,
                                             BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K)
    _dot_kernel[(1,)](u, t, out, m, DTYPE=_TL[weight.dtype], ACC=_TL[acc], BLOCK=BLOCK)
    return out


@on_tensor_device
def scale(weight, sigma_):
    out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    n = weight.numel()
    _scale_kernel[(triton.cdiv(n, BLOCK),)](weight, sigma_, out, n, DTYPE=_TL[weight.dtype],
                                            ACC=_TL[_acc(weight.dtype)], BLOCK=BLOCK)
    return out


@on_tensor_device
def normalize_backward(grad, weight, u, v, sigma_, dim):
    a, m, b = _native.sn_check(weight, u, v, dim, grad=grad, sigma=sigma_)
    if sigma_ is None:
        sigma_ = sigma(weight, u, v, dim)
    acc = _acc(weight.dtype)
    n = weight.numel()
    n_parts = triton.cdiv(n, BLOCK)
    part = torch.empty(n_parts + 1, dtype=acc, device=weight.device)  # the last one holds the sum
    _partial_dot_kernel[(n_parts,)](grad, weight, part, n, ACC=_TL[acc], BLOCK=BLOCK)
    _sum_parts_kernel[(1,)](part, part[n_parts:], n_parts, ACC=_TL[acc], BLOCK=BLOCK)
    out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    _backward_kernel[(n_parts,)](grad, weight, u, v, sigma_, part[n_parts:], out, m, b, n,
                                 DTYPE=_TL[weight.dtype], ACC=_TL[acc], BLOCK=BLOCK)
    return out
