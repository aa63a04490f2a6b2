"""gk.ops.bias_act: clamp(act(x + b) * gain), fused, with first- and second-order gradients.

Three custom ops, StyleGAN2-ADA style: the forward, the gradient op (dx from dy) and the
gradient op's derivative in x. The gradient op is itself differentiable, so the double backward
of a gradient penalty through a discriminator runs through fused kernels; for piecewise-linear
activations (linear, relu, lrelu) act'' is zero and that term is skipped, not computed.
The forward saves x and b only: each gradient recomputes act'(x + b) in registers.
"""

from __future__ import annotations

from typing import Optional

import torch

from ... import _backend, _native
from ..._checks import FLOAT_DTYPES, check_tensor, is_dense
from .reference import (ACT_ALIASES, ACTS, DEFAULT_ALPHA, PIECEWISE_LINEAR, acc_dtype,
                        act_reference, bias_act_grad2_reference, bias_act_grad_reference,
                        bias_act_reference, kernel_form)

IMPLEMENTED = ("reference", "triton", "cuda", "cpu")


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t in x's memory layout, so the kernels can walk both in one flat order."""
    if t.stride() == x.stride() or x.numel() <= 1:
        return t
    return torch.empty_like(x).copy_(t)


def _dispatch(mode, backend, x, b, dy, v, act, alpha, gain, clamp, dim):
    if backend == "reference":
        if mode == 0:
            return bias_act_reference(x, b, act, alpha, gain, clamp, dim)
        if mode == 1:
            return bias_act_grad_reference(dy, x, b, act, alpha, gain, clamp, dim)
        return bias_act_grad2_reference(v, dy, x, b, act, alpha, gain, clamp, dim)
    dy = None if dy is None else _like(dy, x)
    v = None if v is None else _like(v, x)
    channels = x.shape[dim] if b is not None else 1
    inner = x.stride(dim) if b is not None else 1
    code, alpha, gain = kernel_form(act, alpha, gain)
    if backend == "triton":
        from .triton import bias_act_triton

        return bias_act_triton(mode, code, x, b, dy, v, alpha, gain, clamp, inner, channels)
    return _native.bias_act(mode, code, x, b, dy, v, alpha, gain, clamp, inner, channels, backend)


def _dispatch_grad_db(x, b, dy, act, alpha, gain, clamp, dim):
    """(dx, db) on the native CPU backend, from one pass over x and dy."""
    code, alpha, gain = kernel_form(act, alpha, gain)
    return _native.bias_act_grad_db_cpu(code, x, b, _like(dy, x), alpha, gain, clamp, x.stride(dim),
                                        x.shape[dim])


@torch.library.custom_op("gankern::bias_act", mutates_args=())
def _bias_act_op(x: torch.Tensor, b: Optional[torch.Tensor], act: str, alpha: float, gain: float,
                 clamp: Optional[float], dim: int, backend: str) -> torch.Tensor:
    return _dispatch(0, backend, x, b, None, None, act, alpha, gain, clamp, dim)


@torch.library.custom_op("gankern::bias_act_grad", mutates_args=())
def _bias_act_grad_op(dy: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor], act: str,
                      alpha: float, gain: float, clamp: Optional[float], dim: int,
                      backend: str) -> torch.Tensor:
    return _dispatch(1, backend, x, b, dy, None, act, alpha, gain, clamp, dim)


@torch.library.custom_op("gankern::bias_act_grad2", mutates_args=())
def _bias_act_grad2_op(v: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor],
                       act: str, alpha: float, gain: float, clamp: Optional[float], dim: int,
                       backend: str) -> torch.Tensor:
    return _dispatch(2, backend, x, b, dy, v, act, alpha, gain, clamp, dim)


@_bias_act_op.register_fake
def _(x, b, act, alpha, gain, clamp, dim, backend):
    return torch.empty_like(x)


@_bias_act_grad_op.register_fake
def _(dy, x, b, act, alpha, gain, clamp, dim, backend):
    return torch.empty_like(x)


@_bias_act_grad2_op.register_fake
def _(v, dy, x, b, act, alpha, gain, clamp, dim, backend):
    return torch.empty_like(x)


def _bias_grad(dx: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [i for i in range(dx.dim()) if i != dim]
    if not dims:
        return dx.to(b.dtype)
    if dx.device.type == "cpu" and dim > 0 and dx.is_contiguous():
        # db sums dx viewed as (outer, C, inner). torch's CPU reduction over dims (0, 2, 3) is
        # slow for both short and long inner runs (measured, 1 thread: (8, 512, 4, 4) 44 us,
        # (64, 64, 32, 32) 642 us); summing the outer rows first is 2.4x faster for short runs
        # (19 us), each run first 1.4x for long ones (451 us).
        shape = dx.shape
        inner = dx.stride(dim)
        if inner == 1:  # channels last in memory (an MLP's (B, C)): one row sum, 3.3 vs 5.6 us at (16, 512)
            return dx.view(-1, shape[dim]).sum(0, dtype=b.dtype)
        rows = dx.view(-1, shape[dim], inner)
        if inner < 64:
            return rows.sum(0, dtype=b.dtype).sum(1)
        return rows.sum(2, dtype=b.dtype).sum(0)
    return dx.sum(dims, dtype=b.dtype)


def _setup(ctx, inputs, output):
    x, b, act, alpha, gain, clamp, dim, backend = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (act, alpha, gain, clamp, dim, backend)


def _backward(ctx, dy):
    x, b = ctx.saved_tensors
    act, alpha, gain, clamp, dim, backend = ctx.args
    dx = _bias_act_grad_op(dy, x, b, act, alpha, gain, clamp, dim, backend)
    db = _bias_grad(dx, b, dim) if b is not None and ctx.needs_input_grad[1] else None
    return dx, db, None, None, None, None, None, None


_bias_act_op.register_autograd(_backward, setup_context=_setup)


def _setup_grad(ctx, inputs, output):
    dy, x, b, act, alpha, gain, clamp, dim, backend = inputs
    # dy only feeds the act'' term: a piecewise-linear act does not keep it alive.
    ctx.save_for_backward(None if act in PIECEWISE_LINEAR else dy, x, b)
    ctx.args = (act, alpha, gain, clamp, dim, backend)


def _backward_grad(ctx, w):
    """dx = dy * gain * act'(z): linear in dy (same op), and act'' in z (zero when piecewise linear)."""
    dy, x, b = ctx.saved_tensors
    act, alpha, gain, clamp, dim, backend = ctx.args
    d_dy = _bias_act_grad_op(w, x, b, *ctx.args) if ctx.needs_input_grad[0] else None
    d_x = d_b = None
    if act not in PIECEWISE_LINEAR and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        d_x = _bias_act_grad2_op(w, dy, x, b, *ctx.args)
        if b is not None and ctx.needs_input_grad[2]:
            d_b = _bias_grad(d_x, b, dim)
        if not ctx.needs_input_grad[1]:
            d_x = None
    return d_dy, d_x, d_b, None, None, None, None, None, None


_bias_act_grad_op.register_autograd(_backward_grad, setup_context=_setup_grad)


# -- the eager path ------------------------------------------------------------------------------
# Outside torch.compile the same kernels run through two plain autograd.Functions instead of the
# custom ops: a custom-op call pays for argument defaults, the dynamo-disable wrapper, the
# dispatcher and the generated autograd Function, 70-100 us a call on a 2-core CPU, more than
# the kernel of a small activation. Under torch.compile the custom ops stay, so graphs (and
# opcheck) see them. And grads are not materialized: a None gradient (an output nothing depends
# on) returns None instead of running the kernels on zeros. In a gradient penalty the double
# backward sends such a None into the forward graph of D(x_hat); a materialized zero there costs
# a full backward (every conv's weight and input gradient) of D for nothing. (db is computed
# whenever b requires grad, also in the penalty's first backward, which does not use it: asking
# the engine costs a raise inside torch when autograd.grad captures the bias, and the sums are
# ~0.1% of a batch-64 D step.)
class _EagerBiasAct(torch.autograd.Function):
    """y = bias_act(x, b) outside torch.compile; backward through _EagerBiasActGrad."""

    @staticmethod
    def forward(ctx, x, b, act, alpha, gain, clamp, dim, backend):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, b)
        ctx.args = (act, alpha, gain, clamp, dim, backend)
        return _dispatch(0, backend, x, b, None, None, act, alpha, gain, clamp, dim)

    @staticmethod
    def backward(ctx, dy):
        if dy is None:
            # The bias still gets its (zero) gradient, as a materialized zero would give it:
            # an optimizer step after a penalty-only backward (lazy R1) moves it the same way.
            # A bias-sized zero costs less than asking the engine, whose answer raises inside
            # torch for a captured leaf (and a C++ raise aborts the ASan run).
            b = ctx.saved_tensors[1]
            db = torch.zeros_like(b) if b is not None and ctx.needs_input_grad[1] else None
            return None, db, None, None, None, None, None, None
        x, b = ctx.saved_tensors
        args = ctx.args
        need_b = b is not None and ctx.needs_input_grad[1]
        dx = db = None
        if ctx.needs_input_grad[0] or need_b:
            if torch.is_grad_enabled():  # create_graph=True: the differentiable gradient op
                dx = _EagerBiasActGrad.apply(dy, x, b, *args)
            elif need_b and args[5] == "cpu":
                # dx and db from one pass: torch's backward reads dx a second time for db.
                dx, db = _dispatch_grad_db(x, b, dy, *args[:5])
            else:
                dx = _dispatch(1, args[5], x, b, dy, None, *args[:5])
        if need_b and db is None:
            db = _bias_grad(dx, b, args[4])
        return (dx if ctx.needs_input_grad[0] else None), db, None, None, None, None, None, None


class _EagerBiasActGrad(torch.autograd.Function):
    """dx = dy * gain * act'(x + b) * mask outside torch.compile: the gradient op of the eager
    path, differentiable in dy, x and b (the double backward of a gradient penalty)."""

    @staticmethod
    def forward(ctx, dy, x, b, act, alpha, gain, clamp, dim, backend):
        ctx.set_materialize_grads(False)
        # dy only feeds the act'' term: a piecewise-linear act does not keep it alive.
        ctx.save_for_backward(None if act in PIECEWISE_LINEAR else dy, x, b)
        ctx.args = (act, alpha, gain, clamp, dim, backend)
        return _dispatch(1, backend, x, b, dy, None, act, alpha, gain, clamp, dim)

    @staticmethod
    def backward(ctx, w):
        dy, x, b = ctx.saved_tensors
        args = ctx.args
        act, backend, dim = args[0], args[5], args[4]
        if w is None:  # see _EagerBiasAct.backward (no engine query: it may raise in torch)
            zero_db = b is not None and ctx.needs_input_grad[2]
            return (None, None, torch.zeros_like(b) if zero_db else None) + (None,) * 6
        grad_enabled = torch.is_grad_enabled()
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:  # linear in dy: the same gradient op applied to w
            d_dy = _EagerBiasActGrad.apply(w, x, b, *args) if grad_enabled else \
                _dispatch(1, backend, x, b, w, None, *args[:5])
        need_b = b is not None and ctx.needs_input_grad[2]
        if act in PIECEWISE_LINEAR:
            # act'' = 0: nothing to compute, but b gets its zero gradient as in plain PyTorch
            # (whose leaky_relu double backward returns zeros), so an optimizer step after a
            # penalty-only backward treats it the same.
            return d_dy, None, torch.zeros_like(b) if need_b else None, None, None, None, None, None, None
        if ctx.needs_input_grad[1] or need_b:
            if grad_enabled:  # third order: the custom op, as in the compiled path
                d_x = _bias_act_grad2_op(w, dy, x, b, *args)
            else:
                d_x = _dispatch(2, backend, x, b, dy, w, *args[:5])
            if need_b:
                d_b = _bias_grad(d_x, b, dim)
            if not ctx.needs_input_grad[1]:
                d_x = None
        return d_dy, d_x, d_b, None, None, None, None, None, None


def _float_arg(v, name: str, *, min_value: Optional[float] = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    if min_value is not None and v < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {v}")
    return v


# The bias dtypes whose values the accumulation dtype of x holds exactly. A float64 bias on a
# 32- or 16-bit x would be rounded silently (torch's x + b would instead promote the result to
# float64, which a fused op writing x's dtype cannot do): it is refused, naming b.
_EXACT_BIAS_DTYPES = {
    torch.float64: FLOAT_DTYPES,
    torch.float32: (torch.float32, torch.float16, torch.bfloat16),
}


def canonical_act(act) -> str:
    """The activation's own name (aliases such as "swish" mapped); raises on unknown names."""
    if not isinstance(act, str):
        raise TypeError(f"act must be a str, got {type(act).__name__}")
    name = ACT_ALIASES.get(act, act)
    if name not in ACTS:
        raise ValueError(f"act must be one of {tuple(ACTS) + tuple(ACT_ALIASES)}, got {act!r}")
    return name


def _scalar_args(act, alpha, gain, clamp):
    """(act, alpha, gain, clamp) validated and normalized (act's own name, floats)."""
    act = canonical_act(act)
    alpha = _float_arg(DEFAULT_ALPHA.get(act, 0.0) if alpha is None else alpha, "alpha")
    gain = _float_arg(gain, "gain")
    clamp = None if clamp is None else _float_arg(clamp, "clamp", min_value=0.0)
    return act, alpha, gain, clamp


# Every layer calls with the same few scalar arguments every step, and checking them is ~1/3 of
# the Python cost of a call: the normalized result is kept per (value, exact type). Only exact
# str/float/int/None are keys (a subclass could hash or compare as something else; bool is not
# int here), and only arguments that passed are stored, so a bad value is checked every time.
# Zeros are not stored: -0.0 == 0.0 as a key, but a gain of -0.0 flips the sign of zero outputs.
_SCALAR_TYPES = (float, int, type(None))
_scalar_cache: dict = {}


def _scalar_args_cached(act, alpha, gain, clamp):
    ta, tg, tc = type(alpha), type(gain), type(clamp)
    if (type(act) is not str or ta not in _SCALAR_TYPES or tg not in _SCALAR_TYPES or tc not in _SCALAR_TYPES
            or 0 in (alpha, gain, clamp)):
        return _scalar_args(act, alpha, gain, clamp)
    key = (act, ta, alpha, tg, gain, tc, clamp)
    hit = _scalar_cache.get(key)
    if hit is None:
        hit = _scalar_args(act, alpha, gain, clamp)
        if len(_scalar_cache) >= 256:  # a sweep over many values: stay bounded
            _scalar_cache.clear()
        _scalar_cache[key] = hit
    return hit


def _check_args(x, b, act, alpha, gain, clamp, dim):
    """check_bias_act_args, also returning act's own name: (act, alpha, gain, clamp, dim)."""
    check_tensor(x, "x", dtypes=FLOAT_DTYPES)
    act, alpha, gain, clamp = _scalar_args_cached(act, alpha, gain, clamp)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if b is not None:
        if x.dim() == 0:
            raise ValueError("x must have at least 1 dim when b is given, got a 0-d tensor")
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"dim must be in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}, got {dim}")
        dim = dim % x.dim()
        check_tensor(b, "b", dtypes=FLOAT_DTYPES, device=x.device, ndim=1)
        exact = _EXACT_BIAS_DTYPES[acc_dtype(x.dtype)]
        if b.dtype not in exact:
            raise TypeError(f"b must have a dtype that {x.dtype} x is computed in exactly "
                            f"({', '.join(str(d) for d in exact)}), got {b.dtype}: it would be "
                            f"rounded silently; cast b to x's dtype or x to {b.dtype}")
        if b.shape[0] != x.shape[dim]:
            raise ValueError(f"b must have x.shape[{dim}] = {x.shape[dim]} elements, got {b.shape[0]}")
    else:
        dim = dim % x.dim() if x.dim() else 0
    return act, alpha, gain, clamp, dim


def check_bias_act_args(x, b, act, alpha, gain, clamp, dim):
    """Validate a bias_act call; returns (alpha, gain, clamp, dim) normalized."""
    return _check_args(x, b, act, alpha, gain, clamp, dim)[1:]


# The size crossover of impl="auto" on a CPU: below CPU_FUSED_MIN_NUMEL elements plain torch ops
# (x + b, torch's activation) run instead of the kernels. Measured alone, fwd+bwd of bias + lrelu
# (`python scripts/crossover.py bias_act`, one thread, thread CPU time, 2-core EPYC; plain time /
# fused time, above 1 the kernel wins): 0.70-0.79 at 4K-32K elements, 1.13 at 64K, 1.16-1.22 at
# 128K, 1.58-1.93 at 256K, 2.59 at 512K. Below it, the two Python autograd nodes of the fused op
# (~10 us each) cost more than the passes they save. Layers fused by gk.nn.fuse_bias_act run
# unfused on a CPU under auto at every size (gankern/nn/bias_act.py, _plain_on_cpu, with the
# D-step measurements).
CPU_FUSED_MIN_NUMEL = 1 << 16


def _plain(x, b, act, alpha, gain, clamp, dim):
    """bias_act written in torch ops (autograd's own graph): the small-tensor CPU path of auto.
    A 16-bit x with a float32 b computes in float32 and rounds once, as the kernels do."""
    z = x.to(acc_dtype(x.dtype))  # no-op for float32 and float64
    if b is not None:
        z = z + b.view([-1 if i == dim else 1 for i in range(x.dim())])
    y = act_reference(z, act, alpha)
    if gain != 1.0:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, act: str = "lrelu",
             alpha: Optional[float] = None, gain: float = 1.0, clamp: Optional[float] = None,
             dim: int = 1, impl: str = "auto") -> torch.Tensor:
    """clamp(act(x + b) * gain, -clamp, clamp), b broadcast along `dim`.

    act: linear, relu, lrelu, tanh, sigmoid, silu (also called swish), softplus (torch's,
    threshold 20), elu or selu (torch's fixed constants).
    alpha: the slope of lrelu (default 0.2) or the alpha of elu (default 1.0); others ignore it.
    b: x's dtype, or any float dtype x's computation holds exactly (a float32 bias on fp16/bf16
    x is fine, a float64 bias on float32 x is a TypeError).
    Any dense memory format is kept (channels_last in, channels_last out); fp16/bf16 are
    computed in fp32 and rounded once. Differentiable twice, through fused gradient ops.
    """
    act, alpha, gain, clamp, dim = _check_args(x, b, act, alpha, gain, clamp, dim)
    backend = _backend.resolve(impl, x.device, IMPLEMENTED, op="bias_act")
    if not is_dense(x):
        x = x.contiguous()
    if b is not None and (b.dtype != acc_dtype(x.dtype) or not b.is_contiguous()):
        b = b.to(acc_dtype(x.dtype)).contiguous()  # differentiable cast: db returns in b's dtype
    if (backend == "cpu" and x.numel() < CPU_FUSED_MIN_NUMEL and _backend.chosen_by_auto(impl)
            and not torch.compiler.is_compiling()):
        return _plain(x, b, act, alpha, gain, clamp, dim)
    if torch.compiler.is_compiling():
        return _bias_act_op(x, b, act, alpha, gain, clamp, dim, backend)
    return _EagerBiasAct.apply(x, b, act, alpha, gain, clamp, dim, backend)
