"""Spectral-norm ops: fused power iteration, sigma, W/sigma and its analytic backward.

Each is a torch.library custom op (visible to torch.compile, checked by opcheck) that
dispatches to the backend resolved by the caller (gankern.nn.spectral_norm resolves it once per
device). The weight is used in place through its (A, M, B) view (reference.py), never permuted.

sn_normalize(weight, u, v, sigma) returns W / sigma where sigma stands for u^T W v with u, v
constants; its backward is dW = G/sigma - (<G, W>/sigma^2) u v^T in one fused op. A caller that
already has sigma (the power iteration returns it for free) passes it to save a pass over W;
sigma=None computes it inside the op, which is how gradcheck sees a function of W alone.
"""

from __future__ import annotations

from typing import Optional

import torch

from ... import _native
from .reference import (matrix_dims, normalize_backward_reference, power_iteration_reference_,
                        sigma_reference, to_matrix)

IMPLEMENTED = ("reference", "triton", "cuda", "cpu")


def _triton():
    from . import triton as sn_triton

    return sn_triton


# -- power iteration ---------------------------------------------------------------------------
def _power_iteration_impl(weight, u, v, dim, n_iter, eps, backend):
    if backend == "reference":
        w_mat = to_matrix(weight, dim)
        power_iteration_reference_(w_mat, u, v, n_iter, eps)
        u_copy, v_copy = u.clone(), v.clone()
        return sigma_reference(w_mat, u_copy, v_copy), u_copy, v_copy
    if backend == "triton":
        return _triton().power_iteration_(weight, u, v, dim, n_iter, eps)
    return _native.sn_power_iteration_(weight, u, v, dim, n_iter, eps, backend)


@torch.library.custom_op("gankern::sn_power_iteration_", mutates_args=("u", "v"))
def _power_iteration_op(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, n_iter: int,
                        eps: float, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _power_iteration_impl(weight, u, v, dim, n_iter, eps, backend)


@_power_iteration_op.register_fake
def _(weight, u, v, dim, n_iter, eps, backend):
    return weight.new_empty(()), torch.empty_like(u), torch.empty_like(v)


# -- sigma (eval: no power iteration) ----------------------------------------------------------
def _sigma_impl(weight, u, v, dim, backend):
    if backend == "reference":
        return sigma_reference(to_matrix(weight, dim), u, v)
    if backend == "triton":
        return _triton().sigma(weight, u, v, dim)
    return _native.sn_sigma(weight, u, v, dim, backend)


@torch.library.custom_op("gankern::sn_sigma", mutates_args=())
def _sigma_op(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, backend: str) -> torch.Tensor:
    return _sigma_impl(weight, u, v, dim, backend)


@_sigma_op.register_fake
def _(weight, u, v, dim, backend):
    return weight.new_empty(())


# -- W / sigma and its backward ----------------------------------------------------------------
@torch.library.custom_op("gankern::sn_normalize", mutates_args=())
def _normalize_op(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: Optional[torch.Tensor],
                  dim: int, backend: str) -> torch.Tensor:
    if sigma is None:
        sigma = _sigma_op(weight, u, v, dim, backend)
    return _scale_impl(weight, sigma, backend)


@_normalize_op.register_fake
def _(weight, u, v, sigma, dim, backend):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


@torch.library.custom_op("gankern::sn_normalize_backward", mutates_args=())
def _normalize_backward_op(grad: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                           sigma: Optional[torch.Tensor], dim: int, backend: str) -> torch.Tensor:
    return _normalize_backward_impl(grad, weight, u, v, sigma, dim, backend)


@_normalize_backward_op.register_fake
def _(grad, weight, u, v, sigma, dim, backend):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _normalize_setup(ctx, inputs, output):
    weight, u, v, sigma, dim, backend = inputs
    ctx.dim, ctx.backend, ctx.has_sigma = dim, backend, sigma is not None
    ctx.save_for_backward(weight, u, v, sigma if sigma is not None else weight.new_empty(()))


def _normalize_backward(ctx, grad):
    weight, u, v, sigma = ctx.saved_tensors
    d_weight = _normalize_backward_op(grad.contiguous(), weight, u, v, sigma if ctx.has_sigma else None,
                                      ctx.dim, ctx.backend)
    return d_weight, None, None, None, None, None


_normalize_op.register_autograd(_normalize_backward, setup_context=_normalize_setup)


def _backward_setup(ctx, inputs, output):
    grad, weight, u, v, sigma, dim, backend = inputs
    ctx.dim, ctx.has_sigma = dim, sigma is not None
    ctx.save_for_backward(grad, weight, u, v, sigma if sigma is not None else weight.new_empty(()))


def _backward_backward(ctx, hess):
    # Second order in plain (differentiable) torch ops, from L = <H, G/s - (<G,W>/s^2) u v^T>
    # with s = u^T W v:  dL/dG = H/s - (<H,P>/s^2) W,
    #                    dL/dW = -(<H,P>/s^2) G + (2<G,W><H,P>/s^3 - <H,G>/s^2) P,  P = u v^T.
    grad, weight, u, v, sigma = ctx.saved_tensors
    dim = ctx.dim
    w_mat, g_mat, h_mat = to_matrix(weight, dim), to_matrix(grad, dim), to_matrix(hess, dim)
    s = sigma if ctx.has_sigma else sigma_reference(w_mat, u, v)
    hp = torch.vdot(u, torch.mv(h_mat, v))
    gw = (g_mat * w_mat).sum()
    hg = (h_mat * g_mat).sum()
    p = torch.outer(u, v)
    d_grad = h_mat / s - (hp / (s * s)) * w_mat
    d_weight = -(hp / (s * s)) * g_mat + (2 * gw * hp / (s * s * s) - hg / (s * s)) * p
    from .reference import _from_matrix

    return (_from_matrix(d_grad, weight.shape, dim), _from_matrix(d_weight, weight.shape, dim),
            None, None, None, None, None)


_normalize_backward_op.register_autograd(_backward_backward, setup_context=_backward_setup)


# -- the calls gankern.nn.spectral_norm makes --------------------------------------------------
# Outside torch.compile, the two ops without gradients skip the custom-op machinery (argument
# defaults, the dynamo-disable wrapper, the dispatcher): measured 268 us per power iteration of
# a 128x1152 layer through the op vs 96 us calling the same implementation, while the kernel
# itself takes ~55 us. Under torch.compile the custom ops stay, so graphs see them.
def power_iteration_(weight, u, v, dim: int, n_iter: int, eps: float, backend: str):
    """n_iter power iterations on u, v in place (no grad); returns (sigma, u copy, v copy)."""
    with torch.no_grad():
        w = weight.detach().contiguous()
        if torch.compiler.is_compiling():
            return _power_iteration_op(w, u, v, dim, n_iter, float(eps), backend)
        out = _power_iteration_impl(w, u, v, dim, n_iter, float(eps), backend)
        # What the custom op does for mutated arguments: the eval cache and autograd's
        # in-place checks read these counters, and the kernels write through raw pointers.
        torch.autograd.graph.increment_version((u, v))
        return out


def sigma(weight, u, v, dim: int, backend: str) -> torch.Tensor:
    """u^T W v (no grad)."""
    with torch.no_grad():
        w = weight.detach().contiguous()
        if torch.compiler.is_compiling():
            return _sigma_op(w, u, v, dim, backend)
        return _sigma_impl(w, u, v, dim, backend)


def _scale_impl(weight, sigma, backend):
    if backend == "reference":
        return weight / sigma
    if backend == "triton":
        return _triton().scale(weight, sigma)
    return _native.sn_scale(weight, sigma, backend)


def _normalize_backward_impl(grad, weight, u, v, sigma, dim, backend):
    if backend == "reference":
        s = sigma_reference(to_matrix(weight, dim), u, v) if sigma is None else sigma
        return normalize_backward_reference(grad, weight, u, v, s, dim)
    if backend == "triton":
        return _triton().normalize_backward(grad, weight, u, v, sigma, dim)
    return _native.sn_normalize_backward(grad, weight, u, v, sigma, dim, backend)


class _EagerNormalize(torch.autograd.Function):
    """W / sigma outside torch.compile: the same kernels as the custom op, without its
    dispatch (about 70 us a call on the CPU, more than the kernels of a small layer)."""

    @staticmethod
    def forward(ctx, weight, u, v, sigma, dim, backend):
        ctx.dim, ctx.backend = dim, backend
        ctx.save_for_backward(weight, u, v, sigma)
        return _scale_impl(weight, sigma, backend)

    @staticmethod
    def backward(ctx, grad):
        weight, u, v, sigma = ctx.saved_tensors
        grad = grad.contiguous()
        if torch.is_grad_enabled():  # create_graph=True: the differentiable op
            d_weight = _normalize_backward_op(grad, weight, u, v, sigma, ctx.dim, ctx.backend)
        else:
            d_weight = _normalize_backward_impl(grad, weight, u, v, sigma, ctx.dim, ctx.backend)
        return d_weight, None, None, None, None, None


class _EagerTrainForward(torch.autograd.Function):
    """A training forward on the native backends outside torch.compile: the power iteration
    and W / sigma through one validated plan (_native.SnPlan), the fused backward through it
    too. u and v ride in a non-tensor tuple: they are updated in place and get no gradient."""

    @staticmethod
    def forward(ctx, weight, plan, state):
        u, v, n_iter, eps, backend = state
        out, scratch, spec = plan.train_forward(weight, u, v, n_iter, eps)
        ctx.plan, ctx.spec, ctx.backend = plan, spec, backend
        ctx.save_for_backward(weight, scratch)  # scratch: the copies of u, v and sigma
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, scratch = ctx.saved_tensors
        return _plan_backward(ctx.plan, ctx.spec, ctx.backend, grad, weight, scratch), None, None


def _plan_backward(plan, spec, backend: str, grad, weight, scratch):
    """dW of a plan's training forward (its scratch and spec): the fused kernel, or under
    create_graph=True the differentiable op."""
    grad = grad.contiguous()
    if torch.is_grad_enabled():
        u, v, sigma = plan.unpack_scratch(scratch, spec)
        return _normalize_backward_op(grad, weight, u, v, sigma, plan.dim, backend)
    return plan.backward(grad, weight, scratch, spec)


NATIVE_PLAN_BACKENDS = ("cpu", "cuda", "cuda_sim")  # the backends native_plan serves


def native_plan(weight, u, v, dim: int, backend: str = ""):
    """A validated plan for train_forward (cpu, cuda and the test-only cuda_sim backends)."""
    return _native.SnPlan(weight.detach().contiguous(), u, v, dim, backend)


# torch.autograd.Function.apply is a Python wrapper (setup_context detection, functorch checks)
# around the C++ apply that, outside functorch transforms, does nothing else for this Function;
# from a cold cache it costs tens of us, more than a small layer's kernels, so the training
# forward calls the C++ apply directly there. Under a transform it keeps the full wrapper and
# its behaviour (this Function has no setup_context, so a transform refuses it; gk.spectral_norm
# layers never get here under one: they run torch's math there, gankern/nn/spectral_norm.py).
# Unknown (a torch without the query): assume a transform is active, the safe answer.
functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
_train_forward_apply = super(torch.autograd.Function, _EagerTrainForward).apply


def train_forward(weight, u, v, dim: int, n_iter: int, eps: float, backend: str, plan=None):
    """The training forward of a spectrally normalized weight: n_iter power iterations on u, v
    in place (no grad), then W / sigma with the fused backward. `plan` (from native_plan) lets
    the cpu and cuda backends skip the per-call checks outside torch.compile."""
    if plan is None or torch.compiler.is_compiling():
        sigma, u_copy, v_copy = power_iteration_(weight, u, v, dim, n_iter, eps, backend)
        return normalize(weight, u_copy, v_copy, sigma, dim, backend)
    apply = _EagerTrainForward.apply if functorch_active() else _train_forward_apply
    out = apply(weight.contiguous(), plan, (u, v, n_iter, float(eps), backend))
    torch.autograd.graph.increment_version((u, v))  # as power_iteration_: written through pointers
    return out


class _GroupedTrainForward(torch.autograd.Function):
    """The training forwards of several layers in one autograd node: for each, its power
    iteration on u, v in place and W / sigma through its plan, as _EagerTrainForward does for
    one. A layer's Python and autograd costs (a node, its Python backward, the wrapper calls)
    are most of what a small layer's spectral norm costs on a CPU; here they are paid once per
    model call. An output nobody used gets no gradient and its weight none (not a zero one)."""

    @staticmethod
    def forward(ctx, layers, *weights):
        ctx.set_materialize_grads(False)
        outs, scratches, specs = [], [], []
        for (plan, u, v, n_iter, eps, backend), weight in zip(layers, weights):
            out, scratch, spec = plan.train_forward(weight, u, v, n_iter, eps)
            outs.append(out)
            scratches.append(scratch)
            specs.append((plan, spec, backend))
        ctx.specs = specs
        ctx.save_for_backward(*scratches)
        # The weights are kept with their versions, not through save_for_backward: a layer whose
        # W was written in place before its read in this call did not use its output here (it
        # ran its own path), and unpacking all saved tensors would refuse the whole backward
        # for it. Each weight whose output got a gradient is checked as autograd would.
        ctx.weights = weights
        ctx.versions = [w._version for w in weights]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        scratches = ctx.saved_tensors
        d_weights = [None]  # for `layers`
        for grad, weight, version, scratch, (plan, spec, backend) in zip(grads, ctx.weights, ctx.versions,
                                                                        scratches, ctx.specs):
            if grad is None:
                d_weights.append(None)
                continue
            if weight._version != version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by an "
                    f"inplace operation: a spectrally normalized weight of shape {tuple(weight.shape)} is at "
                    f"version {weight._version}, expected version {version} (grouped spectral norm); "
                    "was an optimizer step taken before this backward?")
            d_weights.append(_plan_backward(plan, spec, backend, grad, weight, scratch))
        return tuple(d_weights)


_grouped_apply = super(torch.autograd.Function, _GroupedTrainForward).apply


def grouped_train_forward(layers, weights) -> tuple:
    """The training forwards of several layers in one autograd node (see _GroupedTrainForward).
    layers: one (plan, u, v, n_iter, eps, backend) per weight, plans from native_plan; weights
    contiguous. Returns W / sigma per layer. Not under torch.compile or a torch.func transform
    (the caller's to check: gk.group_spectral_norm runs the per-layer path there)."""
    outs = _grouped_apply(layers, *weights)
    torch.autograd.graph.increment_version([t for layer in layers for t in layer[1:3]])
    return outs


def eval_forward(weight, u, v, dim: int, backend: str, plan=None) -> torch.Tensor:
    """The eval forward: W / sigma with sigma = u^T W v from the stored u, v (no iteration).

    Computed on every call, as torch does. There is deliberately no cache: writes through
    `.data`, numpy views or raw pointers (an EMA copy, weight clipping, a fused optimizer) move
    no version counter, a fingerprint cheaper than reading W can collide, and reading W is
    what sigma costs anyway (one pass; W/sigma is the second). `plan` (from native_plan) lets
    the cpu and cuda backends skip the per-call checks outside torch.compile."""
    if torch.is_grad_enabled() and weight.requires_grad:
        # Cloned, as torch does: the backward keeps these, whatever later happens to the buffers.
        u = u.clone(memory_format=torch.contiguous_format)
        v = v.clone(memory_format=torch.contiguous_format)
        return normalize(weight, u, v, sigma(weight, u, v, dim, backend), dim, backend)
    with torch.no_grad():
        w = weight.contiguous()
        if torch.compiler.is_compiling():
            return _normalize_op(w, u, v, _sigma_op(w, u, v, dim, backend), dim, backend)
        if plan is not None:
            return plan.eval_forward(w, u, v)
        return _scale_impl(w, sigma(w, u, v, dim, backend), backend)


def normalize(weight, u, v, sigma: Optional[torch.Tensor], dim: int, backend: str) -> torch.Tensor:
    """W / sigma with the fused backward; sigma None: u^T W v computed inside."""
    weight = weight.contiguous()
    if sigma is None or torch.compiler.is_compiling():
        return _normalize_op(weight, u, v, sigma, dim, backend)
    return _EagerNormalize.apply(weight, u, v, sigma, dim, backend)


__all__ = ["IMPLEMENTED", "NATIVE_PLAN_BACKENDS", "eval_forward", "grouped_train_forward", "matrix_dims", "native_plan", "normalize", "power_iteration_",
           "sigma", "train_forward"]
