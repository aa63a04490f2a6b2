"""Triton backend of gk.ops.ema_update_multi_: K shadows of one parameter list, one launch per
dtype pair, each parameter block loaded once and lerped into the K shadows.

Like triton.py (ema_update_), a cached int64 table on the device holds, per tensor, its param
pointer, size and K shadow pointers, then one (tensor, start) row per program; the K weights
come from a small device tensor (copied without a host sync).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl

from .._device_guard import on_tensor_device
from .._triton_helpers import cast_out
from .triton import _TL_DTYPES

BLOCK = 4096


@triton.jit
def _ema_multi_kernel(table_ptr, blocks_ptr, weights_ptr,
                      SHADOW_DTYPE: tl.constexpr, PARAM_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
                      K: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(blocks_ptr + 2 * pid)
    start = tl.load(blocks_ptr + 2 * pid + 1)
    row = table_ptr + (K + 2) * t
    params = tl.load(row).to(tl.pointer_type(PARAM_DTYPE))
    n = tl.load(row + 1)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(params + offs, mask=mask).to(ACC_DTYPE)
    for j in tl.static_range(K):
        shadow = tl.load(row + 2 + j).to(tl.pointer_type(SHADOW_DTYPE))
        w = tl.load(weights_ptr + j).to(ACC_DTYPE)
        s = tl.load(shadow + offs, mask=mask).to(ACC_DTYPE)
        d = p - s
        # torch.lerp's two-sided form, bit-compatible with torch._foreach_lerp_.
        out = tl.where(w < 0.5, s + w * d, p - d * (1.0 - w))
        tl.store(shadow + offs, cast_out(out, SHADOW_DTYPE), mask=mask)


_TABLE_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, int]]" = OrderedDict()
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
    entry = (torch.tensor(rows, dtype=torch.int64).to(device),
             torch.tensor(blocks, dtype=torch.int64).to(device), len(blocks) // 2)
    _TABLE_CACHE[key] = entry
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return entry


@on_tensor_device
def ema_update_multi_triton_(shadows: list[list[torch.Tensor]], params: list[torch.Tensor], weights) -> None:
    k = len(shadows)
    groups: dict = {}
    for i, p in enumerate(params):
        if p.numel():
            groups.setdefault((shadows[0][i].dtype, p.dtype), []).append(i)
    for (sd, pd), idx in groups.items():
        ss = [[shadows[j][i] for i in idx] for j in range(k)]
        ps = [params[i] for i in idx]
        device = ps[0].device
        table, blocks, n_programs = _tables(ss, ps, device)
        acc = torch.float64 if sd == torch.float64 else torch.float32
        if isinstance(weights, torch.Tensor):
            w = weights.to(device=device, dtype=acc)
        else:
            w = torch.tensor([float(x) for x in weights], dtype=acc).to(device, non_blocking=True)
        _ema_multi_kernel[(n_programs,)](table, blocks, w, SHADOW_DTYPE=_TL_DTYPES[sd], PARAM_DTYPE=_TL_DTYPES[pd],
                                         ACC_DTYPE=_TL_DTYPES[acc], K=k, BLOCK=BLOCK, num_warps=8)
