"""Triton backend of gk.ops.ema_update_: one launch per dtype pair over a table of tensors.

The table (int64 on the device) holds each tensor's shadow pointer, param pointer and size,
then one (tensor, start) row per program. It is cached by the tensors' addresses, so a trainer
that updates the same EMA every step builds and copies it to the device once, and later calls
launch without a host-to-device copy or a host sync.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl

from .._device_guard import on_tensor_device
from .._triton_helpers import cast_out

BLOCK = 4096

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
              torch.bfloat16: tl.bfloat16}


@triton.jit
def _lerp(s, p, w):
    d = p - s
    # torch.lerp's two-sided form, bit-compatible with torch._foreach_lerp_.
    return tl.where(w < 0.5, s + w * d, p - d * (1.0 - w))


@triton.jit
def _ema_kernel(table_ptr, blocks_ptr, weight, weight_ptr,
                SHADOW_DTYPE: tl.constexpr, PARAM_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
                WEIGHT_FROM_PTR: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(blocks_ptr + 2 * pid)
    start = tl.multiple_of(tl.load(blocks_ptr + 2 * pid + 1), BLOCK)  # blocks start at multiples of BLOCK
    shadow = tl.load(table_ptr + 3 * t).to(tl.pointer_type(SHADOW_DTYPE))
    params = tl.load(table_ptr + 3 * t + 1).to(tl.pointer_type(PARAM_DTYPE))
    if ALIGNED:
        # Pointers read from a table carry no alignment Triton can prove; the launcher checked
        # that every tensor of this launch starts 16-byte aligned, which gives 128-bit accesses.
        shadow = tl.multiple_of(shadow, 16)
        params = tl.multiple_of(params, 16)
    n = tl.load(table_ptr + 3 * t + 2)
    if WEIGHT_FROM_PTR:
        w = tl.load(weight_ptr).to(ACC_DTYPE)
    else:
        w = tl.cast(weight, ACC_DTYPE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        # Full block (all but each tensor's last): no mask, so the accesses can be vectors.
        out = _lerp(tl.load(shadow + offs).to(ACC_DTYPE), tl.load(params + offs).to(ACC_DTYPE), w)
        tl.store(shadow + offs, cast_out(out, SHADOW_DTYPE))
    else:
        mask = offs < n
        out = _lerp(tl.load(shadow + offs, mask=mask).to(ACC_DTYPE),
                    tl.load(params + offs, mask=mask).to(ACC_DTYPE), w)
        tl.store(shadow + offs, cast_out(out, SHADOW_DTYPE), mask=mask)


_TABLE_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, int, bool]]" = OrderedDict()
_TABLE_CACHE_SIZE = 16


def _tables(shadow, params, device):
    key = (device, tuple(s.data_ptr() for s in shadow), tuple(p.data_ptr() for p in params),
           tuple(s.numel() for s in shadow))
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    rows, blocks = [], []
    for i, (s, p) in enumerate(zip(shadow, params)):
        rows += [s.data_ptr(), p.data_ptr(), s.numel()]
        blocks += [x for start in range(0, s.numel(), BLOCK) for x in (i, start)]
    table = torch.tensor(rows, dtype=torch.int64).to(device)
    block_table = torch.tensor(blocks, dtype=torch.int64).to(device)
    aligned = all(x.data_ptr() % 16 == 0 for x in (*shadow, *params))
    entry = (table, block_table, len(blocks) // 2, aligned)
    _TABLE_CACHE[key] = entry
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return entry


@on_tensor_device
def ema_update_triton_(shadow: list[torch.Tensor], params: list[torch.Tensor], weight) -> None:
    groups: dict = {}
    for s, p in zip(shadow, params):
        if s.numel():
            groups.setdefault((s.dtype, p.dtype), ([], []))
            groups[(s.dtype, p.dtype)][0].append(s)
            groups[(s.dtype, p.dtype)][1].append(p)
    for (sd, pd), (ss, ps) in groups.items():
        device = ss[0].device
        table, blocks, n_programs, aligned = _tables(ss, ps, device)
        acc = torch.float64 if sd == torch.float64 else torch.float32
        # Triton passes Python floats as fp32; a float64 EMA reads its weight from memory
        # (torch.full launches a fill, it does not copy from the host or sync).
        from_ptr = isinstance(weight, torch.Tensor) or acc == torch.float64
        if isinstance(weight, torch.Tensor):
            w_tensor = weight.to(device=device, dtype=acc)
        else:
            w_tensor = torch.full((), float(weight), dtype=acc, device=device) if from_ptr else table
        _ema_kernel[(n_programs,)](table, blocks, 0.0 if from_ptr else float(weight), w_tensor,
                                   SHADOW_DTYPE=_TL_DTYPES[sd], PARAM_DTYPE=_TL_DTYPES[pd],
                                   ACC_DTYPE=_TL_DTYPES[acc], WEIGHT_FROM_PTR=from_ptr,
                                   ALIGNED=aligned, BLOCK=BLOCK, num_warps=8)
