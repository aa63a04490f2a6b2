"""Run a Triton launcher with its tensors' CUDA device current, without per-call host copies.

Why: Triton launches on torch's *current* device and its current stream, not on the device of
the tensors it is given. Tensors on cuda:1 while cuda:0 is current (a model moved with .to(1),
DDP with one process over several GPUs) would be launched on the wrong GPU: an illegal memory
access. Every Triton launcher is decorated with on_tensor_device; the usual case (the tensors
are on the current device) costs one index comparison, no context switch.
"""

from __future__ import annotations

import functools

import torch


def _first_tensor(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)) and a:
            inner = _first_tensor(a)
            if inner is not None:
                return inner
    return None


def on_tensor_device(launcher):
    """Decorator: the launcher runs with the device of its first tensor argument current (a
    tensor inside a first list argument counts, e.g. EMA's shadow list)."""

    @functools.wraps(launcher)
    def guarded(*args, **kwargs):
        t = _first_tensor(args)
        if t is None or t.device.type != "cuda" or t.device.index == torch.cuda.current_device():
            return launcher(*args, **kwargs)
        with torch.cuda.device(t.device):
            return launcher(*args, **kwargs)

    guarded.on_tensor_device = True
    return guarded


_CONSTS: dict = {}
_CONSTS_MAX = 64


def device_consts(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A read-only device tensor holding `values`, made once per (values, dtype, device).

    Why: Triton passes Python floats as float32, so float64 kernels read their scalars from
    memory; torch.tensor(values, device=cuda) on every call is a pageable host-to-device copy
    per launch (and fails inside CUDA-graph capture). Layers call with the same few constants
    every step, so after the first step this is a dict lookup.
    """
    key = (values, dtype, device)
    t = _CONSTS.get(key)
    if t is None:
        if len(_CONSTS) >= _CONSTS_MAX:
            _CONSTS.pop(next(iter(_CONSTS)))
        t = _CONSTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return t
