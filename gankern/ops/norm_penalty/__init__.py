"""gk.ops.norm_penalty: per-sample gradient norms and the gradient penalty, fused, with an
analytic backward that is itself a custom op.

Why a custom op with a hand-written backward: the penalty's .backward() is the hot second
pass of every GP step. Autograd of norm/pow/mean would launch several kernels and save every
intermediate; here the forward saves only the norms (B numbers) next to the grads it already
holds, and the backward is one elementwise pass. The backward op has its own autograd formula,
so the op is differentiable to any order (gradgradcheck).
"""

from __future__ import annotations

import torch

from ... import _backend, _native
from ..._checks import FLOAT_DTYPES, check_tensor, is_dense
from .reference import (acc_dtype, norm_penalty_backward_reference, norm_penalty_reference,
                        safe_inverse, unit_rows)

IMPLEMENTED = ("reference", "triton", "cuda", "cpu")


def resolve_backend(impl, device: torch.device) -> str:
    return _backend.resolve(impl, device, IMPLEMENTED, op="norm_penalty")


def _forward_impl(grads, center, weight, backend):
    if backend == "reference":
        p, n = norm_penalty_reference(grads, center, weight)
        return p.clone(), n.clone()  # a custom op's outputs may not alias its input
    if backend == "triton":
        from .triton import norm_penalty_triton

        return norm_penalty_triton(grads, center, weight)
    return _native.norm_penalty(grads, center, weight, backend)


def _backward_impl(grad_penalty, grad_norms, grads, norms, center, weight, backend):
    if backend == "reference":
        return norm_penalty_backward_reference(grad_penalty, grad_norms, grads, norms, center, weight)
    if backend == "triton":
        from .triton import norm_penalty_backward_triton

        return norm_penalty_backward_triton(grad_penalty, grad_norms, grads, norms, center, weight)
    return _native.norm_penalty_backward(grad_penalty, grad_norms, grads, norms, center, weight, backend)


@torch.library.custom_op("gankern::norm_penalty", mutates_args=())
def _norm_penalty_op(grads: torch.Tensor, center: float, weight: float,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward_impl(grads, center, weight, backend)


@_norm_penalty_op.register_fake
def _(grads, center, weight, backend):
    acc = acc_dtype(grads.dtype)
    return grads.new_empty((), dtype=acc), grads.new_empty((grads.shape[0],), dtype=acc)


@torch.library.custom_op("gankern::norm_penalty_backward", mutates_args=())
def _norm_penalty_backward_op(grad_penalty: torch.Tensor, grad_norms: torch.Tensor,
                              grads: torch.Tensor, norms: torch.Tensor, center: float,
                              weight: float, backend: str) -> torch.Tensor:
    return _backward_impl(grad_penalty, grad_norms, grads, norms, center, weight, backend)


@_norm_penalty_backward_op.register_fake
def _(grad_penalty, grad_norms, grads, norms, center, weight, backend):
    return torch.empty_like(grads)


def _setup(ctx, inputs, output):
    grads, center, weight, backend = inputs
    ctx.save_for_backward(grads, output[1])
    ctx.center, ctx.weight, ctx.backend = center, weight, backend


def _backward(ctx, grad_penalty, grad_norms):
    grads, norms = ctx.saved_tensors
    grad_penalty, grad_norms = _materialize(grad_penalty, grad_norms, norms)
    return _norm_penalty_backward_op(grad_penalty, grad_norms, grads, norms, ctx.center,
                                     ctx.weight, ctx.backend), None, None, None


def _materialize(grad_penalty, grad_norms, norms):
    if grad_penalty is None:
        grad_penalty = norms.new_zeros(())
    if grad_norms is None:
        grad_norms = torch.zeros_like(norms)
    return grad_penalty.to(norms.dtype), grad_norms.to(norms.dtype).contiguous()


_norm_penalty_op.register_autograd(_backward, setup_context=_setup)


def _setup_bw(ctx, inputs, output):
    grad_penalty, grad_norms, grads, norms, center, weight, backend = inputs
    ctx.save_for_backward(grad_penalty, grad_norms, grads, norms)
    ctx.center, ctx.weight, ctx.backend = center, weight, backend


def _backward_bw(ctx, v):
    """Third-order path (only for differentiating the penalty's gradient): plain torch is fine.

    out = s*g + (gn - s*c) * g/n, s = gp*2w/B, computed in float64 with g/n formed as in the
    reference backward (no 1/n overflow for denormal norms; 1/n is taken as 0 at n = 0).
    """
    gp, gn, grads, norms = ctx.saved_tensors
    b, c = grads.shape[0], ctx.center
    g, n, unit = unit_rows(grads, norms)
    k = 2.0 * ctx.weight / b
    s = gp.to(torch.float64) * k
    rest = gn.to(torch.float64) - s * c
    inv = safe_inverse(n)
    v64 = v.to(torch.float64)
    shape = (b,) + (1,) * (grads.dim() - 1)
    d_grads = (v64 * (s + inv * rest).reshape(shape)).to(grads.dtype)
    per_row = (v64 * g).reshape(b, -1).sum(1)  # d out / d s-part of row i
    per_row_unit = (v64 * unit).reshape(b, -1).sum(1)  # d out / d gn[i]
    d_gp = (per_row.sum() - c * per_row_unit.sum()) * k
    d_norms = -per_row_unit * inv * rest
    return (d_gp.to(gp.dtype), per_row_unit.to(gn.dtype), d_grads, d_norms.to(norms.dtype),
            None, None, None)


_norm_penalty_backward_op.register_autograd(_backward_bw, setup_context=_setup_bw)


class _EagerNormPenalty(torch.autograd.Function):
    """(penalty, norms) outside torch.compile: the kernels of the custom op without its
    dispatch (70-100 us a call on a 2-core CPU). The backward calls the differentiable backward
    op only under create_graph=True; otherwise the kernel directly.

    Tensors passed after backend get an exact zero gradient whenever the penalty is
    backpropagated: gradient_penalty's pruned parameters (train/zero_second_order.py), which
    torch's double backward would have sent zeros. Giving them here, in the node the backward
    runs anyway, costs one zeros tensor each; a separate node cost ~90 us a penalty on a
    2-core CPU (its own Python backward and an add), 5% of an MLP critic's penalty."""

    @staticmethod
    def forward(ctx, grads, center, weight, backend, *zero_grad_to):
        ctx.set_materialize_grads(False)
        penalty, norms = _forward_impl(grads, center, weight, backend)
        ctx.save_for_backward(grads, norms)
        ctx.center, ctx.weight, ctx.backend = center, weight, backend
        ctx.zero_meta = [(t.shape, t.dtype, t.device) for t in zero_grad_to]
        return penalty, norms

    @staticmethod
    def backward(ctx, grad_penalty, grad_norms):
        if grad_penalty is None and grad_norms is None:
            return (None,) * (4 + len(ctx.zero_meta))
        grads, norms = ctx.saved_tensors
        grad_penalty, grad_norms = _materialize(grad_penalty, grad_norms, norms)
        fn = _norm_penalty_backward_op if torch.is_grad_enabled() else _backward_impl
        zeros = tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.zero_meta)
        return (fn(grad_penalty, grad_norms, grads, norms, ctx.center, ctx.weight, ctx.backend),
                None, None, None) + zeros


def _check_scalar(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    return float(v)


def norm_penalty(grads: torch.Tensor, center: float = 0.0, weight: float = 1.0, impl: str = "auto"):
    """(penalty, norms): norms[i] = ||grads[i]||_2 over all non-batch dims and
    penalty = weight * mean((norms - center)^2), both float32 for 16-bit grads.

    weight (>= 0) is already inside the penalty: add it to the loss as it is. Differentiable
    (any order); the gradient is well defined (0, never NaN) where a norm is 0, and every finite
    input whose exact result is representable gives it, denormal and huge rows included.
    """
    check_tensor(grads, "grads", dtypes=FLOAT_DTYPES, allow_empty=False, min_ndim=1)
    if grads.numel() == 0 or grads.shape[0] == 0:
        raise ValueError(f"grads is empty (shape {tuple(grads.shape)})")
    center = _check_scalar(center, "center")
    weight = _check_scalar(weight, "weight")
    if weight < 0:
        raise ValueError(f"weight must be >= 0 (a negative weight rewards large gradients), got {weight}")
    return norm_penalty_resolved(grads, center, weight, resolve_backend(impl, grads.device))


def norm_penalty_resolved(grads: torch.Tensor, center: float, weight: float, backend: str,
                          zero_grad_to=()):
    """norm_penalty for a caller that has already checked center and weight and resolved the
    backend (gradient_penalty, once per call). zero_grad_to: tensors that get an exact zero
    gradient from the penalty's backward (see _EagerNormPenalty)."""
    if not is_dense(grads):
        grads = grads.contiguous()
    if torch.compiler.is_compiling():
        if zero_grad_to:  # prune() never asks under torch.compile; refuse rather than drop it
            raise RuntimeError("zero_grad_to is not supported under torch.compile")
        return _norm_penalty_op(grads, center, weight, backend)
    return _EagerNormPenalty.apply(grads, center, weight, backend, *zero_grad_to)
