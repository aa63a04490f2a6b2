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


def _ema_update_impl(shadow: list[torch.Tensor], params: list[torch.Tensor], weight: float,
                     weight_tensor: Optional[torch.Tensor], backend: str) -> None:
    # Each path validates exactly once, here, on the real tensors (also when torch.compile
    # traced the caller, or someone calls torch.ops.gankern.ema_update_ directly): the native
    # and Triton paths hand raw pointers to kernels; the reference only needs the aliasing check.
    w = weight_tensor if weight_tensor is not None else weight
    if backend == "reference":
        check_no_overlap(shadow, params, "shadow", "params")
        ema_update_reference_(shadow, params, w)
    elif backend == "triton":
        from .triton import ema_update_triton_

        _native.check_ema_args(shadow, params, w)
        ema_update_triton_(shadow, params, w)
    else:
        _native.ema_update_(shadow, params, w, backend)


_ema_update_op = torch.library.custom_op("gankern::ema_update_", mutates_args=("shadow",))(_ema_update_impl)


@_ema_update_op.register_fake
def _(shadow, params, weight, weight_tensor, backend):
    return None


class LeafRequiresGradError(ValueError, RuntimeError):
    """An in-place EMA update of a tensor autograd tracks. A ValueError by gankern's convention
    and a RuntimeError like torch's own refusal, so code written for either catches it."""


def check_not_empty_and_writable(shadow: list, params: list) -> None:
    """What torch._foreach_lerp_ refuses, refused the same way (gankern's ops are not
    differentiable, so a shadow that requires grad is refused in grad mode even when it is not a
    leaf, where torch would record the lerp). Under torch.no_grad() any shadow is fine, as in torch
    (that is how optimizers and EMAs write parameters)."""
    if not shadow and not params:
        raise ValueError("shadow and params are empty lists: an EMA update needs at least one tensor "
                         "(torch._foreach_lerp_ refuses empty lists too)")
    if torch.is_grad_enabled():
        for i, s in enumerate(shadow):
            if s.requires_grad:
                raise LeafRequiresGradError(
                    f"shadow[{i}] requires grad and grad mode is on: an in-place EMA update of a tensor "
                    f"autograd tracks is refused (as torch._foreach_lerp_ refuses a leaf that requires "
                    f"grad); call it under torch.no_grad()")


def ema_update_(shadow, params, weight, impl: str = "auto") -> None:
    """shadow[i] += weight * (params[i] - shadow[i]) for every i, in place.

    Like torch._foreach_lerp_: empty lists are refused, and so is a shadow that requires grad
    while grad mode is on (run it under torch.no_grad()).

    weight: a float in [0, 1] (1 - decay) or a 0-d floating tensor on the tensors' device, so
    a decay schedule computed on the GPU costs no host sync and the update can be captured in a
    CUDA graph. One launch per (shadow dtype, param dtype) group; a float32 shadow of bf16/fp16
    params is updated in one pass, reading the params upcast.
    """
    if _native_fast_path(shadow, params, weight, impl):
        return
    shadow = check_tensor_list(shadow, "shadow")
    params = check_tensor_list(params, "params")
    check_not_empty_and_writable(shadow, params)
    _native._check_ema_weight(weight, shadow)
    if isinstance(weight, torch.Tensor) and weight.device.type == "cpu" and shadow and shadow[0].is_cuda:
        weight = float(weight)  # a CPU scalar costs no device sync
    if not shadow or torch.compiler.is_compiling():
        _native.check_ema_args(shadow, params, weight, check_overlap=False)
        if not shadow:
            return
    device = shadow[0].device
    # Devices are checked before dispatch: a meta tensor in the lists would route the call to
    # the fake kernel, past every check inside the op.
    if any(t.device != device for t in shadow) or any(t.device != device for t in params):
        _native.check_ema_args(shadow, params, weight, check_overlap=False)
    backend = _backend.resolve(impl, device, IMPLEMENTED, op="ema_update_")
    if backend == "reference":  # the other backends check everything inside the op
        _native.check_ema_args(shadow, params, weight, check_overlap=False)
    w, w_tensor = (0.0, weight) if isinstance(weight, torch.Tensor) else (float(weight), None)
    if torch.compiler.is_compiling():
        _ema_update_op(shadow, params, w, w_tensor, backend)
        return
    # Eager: the op's body without the dispatcher, which costs ~100 us a call with two tensor
    # lists (as much as the whole update of a small G on a CPU). The version counters move as
    # the op's declared mutation would move them.
    _ema_update_impl(shadow, params, w, w_tensor, backend)
    torch.autograd.graph.increment_version(shadow)


def _native_fast_path(shadow, params, weight, impl: str) -> bool:
    """Run an eager call whose lists pass _native.ema_fast_groups (the checks below, in one
    pass) on the native backend it resolves to; False, having changed nothing, for anything
    else, which then takes the full path and its error messages."""
    if type(shadow) not in (list, tuple) or type(params) not in (list, tuple) or torch.compiler.is_compiling():
        return False
    fast = _native.ema_fast_groups(shadow, params, torch.is_grad_enabled())
    if fast is None:
        return False
    device, groups = fast
    _native._check_ema_weight(weight, shadow)
    backend = _backend.resolve(impl, device, IMPLEMENTED, op="ema_update_")
    if backend not in ("cpu", "cuda", "cuda_sim"):
        return False
    if isinstance(weight, torch.Tensor) and weight.device.type == "cpu" and device.type == "cuda":
        weight = float(weight)  # a CPU scalar costs no device sync
    _native._ema_launch(device, groups, weight, backend)
    torch.autograd.graph.increment_version(shadow)
    return True


class PlannedEmaUpdate:
    """ema_update_ over the same tensor lists every step, with the checks paid once.

    gk.EMA uses this: a generator has hundreds of tensors and full validation costs about 10 us
    per tensor in Python, more than the update itself on a GPU. Each call re-reads only the data
    pointers and revalidates everything if any moved.
    """

    def __init__(self, shadow: list, params: list, impl: str = "auto"):
        shadow = check_tensor_list(shadow, "shadow")
        params = check_tensor_list(params, "params")
        self.plan = _native.EmaPlan(shadow, params)
        self.backend = _backend.resolve(impl, self.plan.device, IMPLEMENTED, op="ema_update_")
        self.plan.backend = self.backend  # "cuda_sim" runs the CUDA launcher on the host

    def __call__(self, weight) -> None:
        """One update; callers need not disable grad mode (gk.EMA does not, to save its cost)."""
        if self.backend in ("cpu", "cuda", "cuda_sim"):
            if isinstance(weight, torch.Tensor) and weight.device != self.plan.device:
                weight = float(weight)
            self.plan.run(weight)
            return
        if not self.plan.shadow:
            return
        if isinstance(weight, torch.Tensor) and weight.device != self.plan.device:
            weight = float(weight)
        self.plan.revalidate_if_moved()
        with torch.no_grad():  # the reference's torch lerp would otherwise record the update
            if self.backend == "reference":
                ema_update_reference_(self.plan.shadow, self.plan.params, weight)
            else:
                from .triton import ema_update_triton_

                ema_update_triton_(self.plan.shadow, self.plan.params, weight)
