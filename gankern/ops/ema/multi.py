"""gk.ops.ema_update_multi_: K EMAs of one parameter list in one pass (post-hoc EMA).

Post-hoc EMA (gk.PostHocEMA) keeps K averages of the same model with different decays. K
separate ema_update_ calls read the parameters K times (3K tensor passes); this op reads each
parameter once and updates the K shadows from it (1 + 2K passes). Same checks as ema_update_,
one torch.library custom op dispatching to the backend gankern._backend picks.
"""

from __future__ import annotations

from typing import Optional

import torch

from ... import _backend, _native
from ..._checks import check_no_overlap, check_tensor_list
from . import check_not_empty_and_writable
from .reference import ema_update_multi_reference_

IMPLEMENTED = ("reference", "triton", "cuda", "cpu")


def _unflatten(flat: list, k: int) -> list[list[torch.Tensor]]:
    n = len(flat) // k
    return [flat[j * n:(j + 1) * n] for j in range(k)]


def _ema_update_multi_impl(shadows_flat: list[torch.Tensor], params: list[torch.Tensor], weights: list[float],
                           weights_tensor: Optional[torch.Tensor], backend: str) -> None:
    # As in ema_update_: every path validates once here, on the real tensors, before pointers
    # reach a kernel (also when torch.compile traced the caller).
    k = len(weights) if weights_tensor is None else weights_tensor.shape[0]
    shadows = _unflatten(shadows_flat, k)
    w = weights_tensor if weights_tensor is not None else weights
    if backend == "reference":
        check_no_overlap(shadows_flat, params, "shadows", "params")
        ema_update_multi_reference_(shadows, params, w)
    elif backend == "triton":
        from .triton_multi import ema_update_multi_triton_

        _native.check_ema_multi_args(shadows, params, w)
        ema_update_multi_triton_(shadows, params, w)
    else:
        _native.ema_update_multi_(shadows, params, w, backend)


_op = torch.library.custom_op("gankern::ema_update_multi_", mutates_args=("shadows_flat",))(_ema_update_multi_impl)


@_op.register_fake
def _(shadows_flat, params, weights, weights_tensor, backend):
    return None


def _check_lists(shadows, params):
    if isinstance(shadows, torch.Tensor) or not isinstance(shadows, (list, tuple)):
        raise TypeError(f"shadows must be a list of K tensor lists, got {type(shadows).__name__}")
    shadows = [check_tensor_list(s, f"shadows[{k}]") for k, s in enumerate(shadows)]
    params = check_tensor_list(params, "params")
    if not shadows:
        raise ValueError("shadows is empty: give at least one list of shadow tensors")
    for k, s in enumerate(shadows):
        if len(s) != len(params):
            raise ValueError(f"shadows[{k}] and params must have the same length, got {len(s)} and {len(params)}")
    for k, s in enumerate(shadows):
        try:
            check_not_empty_and_writable(s, params)
        except ValueError as e:
            raise type(e)(str(e).replace("shadow[", f"shadows[{k}][")) from None
    return shadows, params


def ema_update_multi_(shadows, params, weights, impl: str = "auto") -> None:
    """shadows[k][i] += weights[k] * (params[i] - shadows[k][i]) for every k and i, in place.

    shadows: K (1 to 8) lists, each shaped like params; weights: K floats in [0, 1], or a
    floating device tensor of shape (K,) (no host sync; graph-capturable). Each parameter is
    read once per call. Results equal K separate gk.ops.ema_update_ calls bit for bit.
    """
    shadows, params = _check_lists(shadows, params)
    _native._check_ema_multi_weights(weights, len(shadows))
    device = params[0].device if params else torch.device("cpu")
    if any(t.device != device for s in shadows for t in s) or any(t.device != device for t in params):
        _native.check_ema_multi_args(shadows, params, weights, check_overlap=False)
    backend = _backend.resolve(impl, device, IMPLEMENTED, op="ema_update_multi_")
    if backend == "reference" or torch.compiler.is_compiling():
        _native.check_ema_multi_args(shadows, params, weights, check_overlap=False)
    if isinstance(weights, torch.Tensor):
        w, w_tensor = [], weights
    else:
        w, w_tensor = [float(x) for x in weights], None
    flat = [t for s in shadows for t in s]
    if torch.compiler.is_compiling():
        _op(flat, params, w, w_tensor, backend)
        return
    # Eager: the op's body without the dispatcher (as ema_update_ does); the version counters
    # move as the declared mutation would move them.
    _ema_update_multi_impl(flat, params, w, w_tensor, backend)
    torch.autograd.graph.increment_version(flat)


class PlannedEmaMultiUpdate:
    """ema_update_multi_ over the same lists every step, checks paid once (gk.PostHocEMA)."""

    def __init__(self, shadows, params, impl: str = "auto"):
        shadows, params = _check_lists(shadows, params)
        self.plan = _native.EmaMultiPlan(shadows, params)
        self.backend = _backend.resolve(impl, self.plan.device, IMPLEMENTED, op="ema_update_multi_")
        self.plan.backend = self.backend  # "cuda_sim" runs the CUDA launcher on the host

    def __call__(self, weights) -> None:
        if self.backend in ("cpu", "cuda", "cuda_sim"):
            self.plan.run(weights)
            return
        self.plan.revalidate_if_moved()
        _native._check_ema_multi_weights(weights, self.plan.k)
        if self.backend == "reference":
            ema_update_multi_reference_(self.plan.shadows, self.plan.params, weights)
        else:
            from .triton_multi import ema_update_multi_triton_

            ema_update_multi_triton_(self.plan.shadows, self.plan.params, weights)
