"""Argument checks shared by every op: one clear ValueError/TypeError naming the argument.

Every public op validates here before any work starts, so bad input changes nothing.
_native.py runs the same checks again at the pointer boundary.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(t, name: str, *, dtypes=FLOAT_DTYPES, device: torch.device | None = None,
                 allow_empty: bool = True, ndim: int | None = None, min_ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all tensors of one call share a device)")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(t.shape)}")


def is_dense(t: torch.Tensor) -> bool:
    """Contiguous in some memory format, so an elementwise kernel may treat it as flat storage."""
    if t.is_contiguous():
        return True
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return True
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def check_same_layout(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}")
    if not is_dense(a):
        raise ValueError(f"{a_name} must be contiguous (or dense channels_last), got strides {a.stride()}")
    if not is_dense(b):
        raise ValueError(f"{b_name} must be contiguous (or dense channels_last), got strides {b.stride()}")
    if a.numel() > 1 and a.stride() != b.stride():
        raise ValueError(f"{a_name} and {b_name} must share a memory layout, got strides "
                         f"{a.stride()} and {b.stride()}")


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def check_no_overlap(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
                     out_name: str, in_name: str) -> None:
    """Outputs written in place may overlap neither each other nor any input (O(n log n))."""
    # Names are formatted only for the error: this runs every step over hundreds of tensors.
    spans = []
    for i, t in enumerate(outputs):
        if t.numel():
            spans.append((*_byte_range(t), True, i))
    for i, t in enumerate(inputs):
        if t.numel():
            spans.append((*_byte_range(t), False, i))
    spans.sort(key=lambda s: s[0])

    def name(span) -> str:
        return f"{out_name if span[2] else in_name}[{span[3]}]"

    # Sweep: keep the open span reaching furthest among outputs and among inputs.
    last_out = last_in = None
    for span in spans:
        start, _, is_out, _ = span
        for prev in (last_out, last_in) if is_out else (last_out,):
            if prev is not None and prev[1] > start:
                raise ValueError(f"{name(span)} overlaps {name(prev)} in memory; an in-place output must "
                                 f"not alias another output or an input")
        if is_out:
            last_out = span if last_out is None or span[1] > last_out[1] else last_out
        else:
            last_in = span if last_in is None or span[1] > last_in[1] else last_in


def check_tensor_list(ts, name: str) -> list:
    if isinstance(ts, torch.Tensor) or not isinstance(ts, Iterable):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(ts).__name__}")
    ts = list(ts)
    for i, t in enumerate(ts):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return ts


def common_device(tensors: Sequence[torch.Tensor], names: Sequence[str]) -> torch.device:
    device = None
    for t, n in zip(tensors, names):
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"{n} is on {t.device} but {names[0]} is on {device}: mixed devices")
    return device if device is not None else torch.device("cpu")
