"""The definition of gk.ops.ema_update_: torch._foreach_lerp_ (what AveragedModel and timm use)."""

from __future__ import annotations

import torch


def ema_update_reference_(shadow: list[torch.Tensor], params: list[torch.Tensor], weight) -> None:
    if not shadow:
        return
    # _foreach_lerp_ needs one dtype per pair: a float32 shadow of bf16 params reads them upcast.
    ends = [p if p.dtype == s.dtype else p.to(s.dtype) for s, p in zip(shadow, params)]
    if isinstance(weight, torch.Tensor):
        torch._foreach_lerp_(shadow, ends, [weight.to(s.dtype) for s in shadow])
    else:
        torch._foreach_lerp_(shadow, ends, float(weight))


def ema_update_float64(shadow: list[torch.Tensor], params: list[torch.Tensor], weight) -> list[torch.Tensor]:
    """Out-of-place float64 result, for tests: s + w * (p - s)."""
    w = float(weight)
    return [s.double() + w * (p.double() - s.double()) for s, p in zip(shadow, params)]


def ema_update_multi_reference_(shadows: list[list[torch.Tensor]], params: list[torch.Tensor], weights) -> None:
    """The definition of gk.ops.ema_update_multi_: K separate updates, one per shadow list."""
    for k, shadow in enumerate(shadows):
        ema_update_reference_(shadow, params, weights[k] if isinstance(weights, torch.Tensor) else float(weights[k]))
