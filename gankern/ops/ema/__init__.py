"""gk.ops.ema_update_: in-place multi-tensor lerp, the step of every weight EMA.

One torch.library custom op (so torch.compile and opcheck see it) that dispatches to the
backend chosen by gankern._backend. Validation happens once, here, before any backend runs.
"""

from __future__ import annotations

from typing import Optional

import torch

from ... import _backend, _native
from ..._checks import check_no_overlap, check_tensor_list
from .reference import ema_update_reference_

IMPLEMENTED = ("reference", "triton", "cuda", "cpu")


@torch.library.custom_op("gankern::ema_update_", mutates_args=("shadow",))
def _ema_update_op(shadow: list[torch.Tensor], params: list[torch.Tensor], weight: float,
                   weight_tensor: Optional[torch.Tensor], backend: str) -> None:
    w = weight_tensor if weight_tensor is not None else weight
    if backend in ("reference", "triton"):  # the native path checks aliasing at its boundary
        check_no_overlap(shadow, params, "shadow", "params")
    if backend == "reference":
        ema_update_reference_(shadow, params, w)
    elif backend == "triton":
        from .triton import ema_update_triton_

        ema_update_triton_(shadow, params, w)
    else:
        _native.ema_update_(shadow, params, w)


@_ema_update_op.register_fake
def _(shadow, params, weight, weight_tensor, backend):
    return None


def ema_update_(shadow, params, weight, impl: str = "auto") -> None:
    """shadow[i] += weight * (params[i] - shadow[i]) for every i, in place.

    weight: a float in [0, 1] (1 - decay) or a 0-d floating tensor on the tensors' device, so
    a decay schedule computed on the GPU costs no host sync and the update can be captured in a
    CUDA graph. One launch per (shadow dtype, param dtype) group; a float32 shadow of bf16/fp16
    params is updated in one pass, reading the params upcast.
    """
    shadow = check_tensor_list(shadow, "shadow")
    params = check_tensor_list(params, "params")
    if isinstance(weight, torch.Tensor) and weight.device.type == "cpu" and shadow and shadow[0].is_cuda:
        weight = float(weight)  # a CPU scalar costs no device sync
    device = _native.check_ema_args(shadow, params, weight, check_overlap=False)
    if not shadow:
        return
    backend = _backend.resolve(impl, device, IMPLEMENTED, op="ema_update_")
    if isinstance(weight, torch.Tensor):
        _ema_update_op(shadow, params, 0.0, weight, backend)
    else:
        _ema_update_op(shadow, params, float(weight), None, backend)
