"""The definition of gk.ops.bias_act, and its first/second derivative in closed form.

bias_act_reference is plain PyTorch (torch.nn.functional), the definition the kernels are
tested against. The grad / grad2 functions spell out act'(z) and act''(z): they are the
reference backend of the gradient ops, written with the same formulas the kernels use.
16-bit inputs are computed in float32 and rounded once.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

# Must match csrc/include/gankern/bias_act.h:Act.
# selu has no kernel code of its own: selu(z) = SELU_SCALE * elu(z, SELU_ALPHA), so the kernels
# run it as their elu with alpha = SELU_ALPHA and the scale folded into gain (kernel_form).
ACTS = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4, "silu": 5, "softplus": 6, "elu": 7,
        "selu": 7}
# Other names of the same function (StyleGAN2-ADA calls silu "swish"); bias_act maps them first.
ACT_ALIASES = {"swish": "silu"}
# torch.nn.functional.selu's fixed constants (Klambauer et al. 2017); selu ignores alpha.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
# act''(z) == 0 almost everywhere: their second-order term is skipped, not computed.
PIECEWISE_LINEAR = ("linear", "relu", "lrelu")
DEFAULT_ALPHA = {"lrelu": 0.2, "elu": 1.0}


def kernel_form(act: str, alpha: float, gain: float):
    """(kernel code, alpha, gain) the kernels compute `act` with; the clamp sees the same u."""
    if act == "selu":
        return ACTS["elu"], SELU_ALPHA, gain * SELU_SCALE
    return ACTS[act], alpha, gain


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def bias_shape(x: torch.Tensor, dim: int) -> list[int]:
    return [-1 if i == dim else 1 for i in range(x.dim())]


def _pre(x, b, dim):
    z = x.to(acc_dtype(x.dtype))
    if b is not None:
        z = z + b.to(z.dtype).reshape(bias_shape(x, dim))
    return z


def act_reference(z: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    if act == "linear":
        return z
    if act == "relu":
        return F.relu(z)
    if act == "lrelu":
        return F.leaky_relu(z, alpha)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    if act == "silu":
        return F.silu(z)
    if act == "softplus":
        return F.softplus(z)
    if act == "elu":
        return F.elu(z, alpha)
    if act == "selu":
        return F.selu(z)
    raise ValueError(f"unknown act {act!r}")


def bias_act_reference(x, b, act, alpha, gain, clamp, dim):
    y = act_reference(_pre(x, b, dim), act, alpha) * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)


def derivatives(z: torch.Tensor, act: str, alpha: float):
    """(act'(z), act''(z)), the formulas of the kernels."""
    zero = torch.zeros_like(z)
    if act == "linear":
        return torch.ones_like(z), zero
    if act == "relu":
        return (z > 0).to(z.dtype), zero
    if act == "lrelu":
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, alpha)), zero
    if act == "tanh":
        t = torch.tanh(z)
        d1 = 1 - t * t
        return d1, -2 * t * d1
    if act in ("sigmoid", "silu", "softplus"):
        s = torch.sigmoid(z)
        ds = s * (1 - s)
        if act == "sigmoid":
            return ds, ds * (1 - 2 * s)
        if act == "silu":
            return s + z * ds, ds * (2 + z * (1 - 2 * s))
        linear = z > 20  # torch's softplus threshold
        return torch.where(linear, 1.0, s), torch.where(linear, 0.0, ds)
    if act == "elu":
        e = alpha * torch.exp(torch.clamp(z, max=0))
        return torch.where(z > 0, 1.0, e), torch.where(z > 0, 0.0, e)
    if act == "selu":
        e = SELU_SCALE * SELU_ALPHA * torch.exp(torch.clamp(z, max=0))
        return torch.where(z > 0, SELU_SCALE, e), torch.where(z > 0, 0.0, e)
    raise ValueError(f"unknown act {act!r}")


def _mask(z, act, alpha, gain, clamp):
    if clamp is None:
        return None
    u = act_reference(z, act, alpha) * gain
    return ((u >= -clamp) & (u <= clamp)).to(z.dtype)


def bias_act_grad_reference(dy, x, b, act, alpha, gain, clamp: Optional[float], dim):
    """dx = dy * gain * act'(x + b) * [inside the clamp]."""
    z = _pre(x, b, dim)
    d1, _ = derivatives(z, act, alpha)
    out = dy.to(z.dtype) * gain * d1
    m = _mask(z, act, alpha, gain, clamp)
    return (out if m is None else out * m).to(x.dtype)


def bias_act_grad2_reference(v, dy, x, b, act, alpha, gain, clamp: Optional[float], dim):
    """d/dx of <v, dx>: v * dy * gain * act''(x + b) * [inside the clamp]."""
    z = _pre(x, b, dim)
    _, d2 = derivatives(z, act, alpha)
    out = v.to(z.dtype) * dy.to(z.dtype) * gain * d2
    m = _mask(z, act, alpha, gain, clamp)
    return (out if m is None else out * m).to(x.dtype)
