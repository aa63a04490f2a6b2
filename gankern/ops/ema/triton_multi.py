"""Triton backend of gk.ops.ema_update_multi_: K shadows of one parameter list, one launch per
dtype pair, each parameter block loaded once and lerped into the K shadows.

Like triton.py (ema_update_), a cached int64 table on the device holds, per tensor, its param
pointer, size and K shadow pointers, then one (tensor, start) row per program. Float weights
travel as kernel arguments (no host-to-device copy per call: a post-hoc EMA changes its
weights every step, so they cannot be cached on the device); a weights tensor is read from
device memory.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

import torch
import triton
import triton.language as tl

from .._device_guard import on_tensor_device
from .._triton_helpers import cast_out
from .triton import _TL_DTYPES, _lerp

BLOCK = 4096
MAX_K = 8
_WEIGHT_ARGS = [f"w{j}_{half}" for j in range(MAX_K) for half in ("hi", "lo")]


@triton.jit
def _weight(hi, lo, weights_ptr, j: tl.constexpr, ACC_DTYPE: tl.constexpr, WEIGHT_FROM_PTR: tl.constexpr):
    if WEIGHT_FROM_PTR:
        w = tl.load(weights_ptr + j).to(ACC_DTYPE)
    else:
        # The float64 bit pattern in two int32 words, bit-exact for a float64 EMA (Triton would
        # pass a Python float as float32); rounding it to float32 matches torch's fp32 weight.
        bits = (hi.to(tl.int64) << 32) | (lo.to(tl.int64) & 0xFFFFFFFF)
        w = bits.to(tl.float64, bitcast=True).to(ACC_DTYPE)
    return w


@triton.jit
def _lerp_block(row, offs, p, w, n, j: tl.constexpr, SHADOW_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
                ALIGNED: tl.constexpr, FULL: tl.constexpr):
    shadow = tl.load(row + 2 + j).to(tl.pointer_type(SHADOW_DTYPE))
    if ALIGNED:
        shadow = tl.multiple_of(shadow, 16)
    if FULL:
        s = tl.load(shadow + offs).to(ACC_DTYPE)
        tl.store(shadow + offs, cast_out(_lerp(s, p, w), SHADOW_DTYPE))
    else:
        mask = offs < n
        s = tl.load(shadow + offs, mask=mask).to(ACC_DTYPE)
        tl.store(shadow + offs, cast_out(_lerp(s, p, w), SHADOW_DTYPE), mask=mask)


@triton.jit(do_not_specialize=_WEIGHT_ARGS)
def _ema_multi_kernel(table_ptr, blocks_ptr, weights_ptr,
                      w0_hi, w0_lo, w1_hi, w1_lo, w2_hi, w2_lo, w3_hi, w3_lo,
                      w4_hi, w4_lo, w5_hi, w5_lo, w6_hi, w6_lo, w7_hi, w7_lo,
                      SHADOW_DTYPE: tl.constexpr, PARAM_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
                      WEIGHT_FROM_PTR: tl.constexpr, ALIGNED: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(blocks_ptr + 2 * pid)
    start = tl.multiple_of(tl.load(blocks_ptr + 2 * pid + 1), BLOCK)  # blocks start at multiples of BLOCK
    row = table_ptr + (K + 2) * t
    params = tl.load(row).to(tl.pointer_type(PARAM_DTYPE))
    if ALIGNED:
        # Pointers read from a table carry no alignment Triton can prove; the launcher checked
        # that every tensor of this launch starts 16-byte aligned, which gives 128-bit accesses.
        params = tl.multiple_of(params, 16)
    n = tl.load(row + 1)
    offs = start + tl.arange(0, BLOCK)
    his = (w0_hi, w1_hi, w2_hi, w3_hi, w4_hi, w5_hi, w6_hi, w7_hi)
    los = (w0_lo, w1_lo, w2_lo, w3_lo, w4_lo, w5_lo, w6_lo, w7_lo)
    if start + BLOCK <= n:
        # Full block (all but each tensor's last): no mask, so the accesses can be vectors.
        p = tl.load(params + offs).to(ACC_DTYPE)
        for j in tl.static_range(K):
            w = _weight(his[j], los[j], weights_ptr, j, ACC_DTYPE, WEIGHT_FROM_PTR)
            _lerp_block(row, offs, p, w, n, j, SHADOW_DTYPE, ACC_DTYPE, ALIGNED, True)
    else:
        mask = offs < n
        p = tl.load(params + offs, mask=mask).to(ACC_DTYPE)
        for j in tl.static_range(K):
            w = _weight(his[j], los[j], weights_ptr, j, ACC_DTYPE, WEIGHT_FROM_PTR)
            _lerp_block(row, offs, p, w, n, j, SHADOW_DTYPE, ACC_DTYPE, ALIGNED, False)


_TABLE_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, int, bool]]" = OrderedDict()
_TABLE_CACHE_SIZE = 16


def _tables(shadows, params, device):
    k = len(shadows)
    key = (device, k, tuple(s.data_ptr() for shadow in shadows for s in shadow),
           tuple(p.data_ptr() for p in params), tuple(p.numel() for p in params))
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    rows, blocks = [], []
    for i, p in enumerate(params):
        rows += [p.data_ptr(), p.numel()] + [shadows[j][i].data_ptr() for j in range(k)]
        blocks += [x for start in range(0, p.numel(), BLOCK) for x in (i, start)]
    aligned = all(x.data_ptr() % 16 == 0 for x in (*params, *(s for shadow in shadows for s in shadow)))
    entry = (torch.tensor(rows, dtype=torch.int64).to(device),
             torch.tensor(blocks, dtype=torch.int64).to(device), len(blocks) // 2, aligned)
    _TABLE_CACHE[key] = entry
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return entry


def _weight_words(weights) -> list[int]:
    """Each float64 weight as (high, low) signed int32 words; unused slots are 0.0. Always int32,
    so the kernel's signature (and compiled variant) does not change with the weights' values."""
    words = []
    for j in range(MAX_K):
        bits = struct.unpack("<q", struct.pack("<d", float(weights[j]) if j < len(weights) else 0.0))[0]
        lo = bits & 0xFFFFFFFF
        words += [bits >> 32, lo - (1 << 32) if lo >= 1 << 31 else lo]
    return words


_NO_WEIGHT_WORDS = [0] * (2 * MAX_K)


@on_tensor_device
def ema_update_multi_triton_(shadows: list[list[torch.Tensor]], params: list[torch.Tensor], weights) -> None:
    k = len(shadows)
    groups: dict = {}
    for i, p in enumerate(params):
        if p.numel():
            groups.setdefault((shadows[0][i].dtype, p.dtype), []).append(i)
    from_ptr = isinstance(weights, torch.Tensor)
    words = _NO_WEIGHT_WORDS if from_ptr else _weight_words(weights)
    for (sd, pd), idx in groups.items():
        ss = [[shadows[j][i] for i in idx] for j in range(k)]
        ps = [params[i] for i in idx]
        device = ps[0].device
        table, blocks, n_programs, aligned = _tables(ss, ps, device)
        acc = torch.float64 if sd == torch.float64 else torch.float32
        w = weights.to(device=device, dtype=acc) if from_ptr else table
        _ema_multi_kernel[(n_programs,)](table, blocks, w, *words, SHADOW_DTYPE=_TL_DTYPES[sd],
                                         PARAM_DTYPE=_TL_DTYPES[pd], ACC_DTYPE=_TL_DTYPES[acc],
                                         WEIGHT_FROM_PTR=from_ptr, ALIGNED=aligned, K=k, BLOCK=BLOCK, num_warps=8)
