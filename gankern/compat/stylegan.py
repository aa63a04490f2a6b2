"""StyleGAN2-ADA / StyleGAN3's torch_utils.ops.bias_act.bias_act on gankern's fused op.

gk.ops.bias_act has gankern's conventions (act="lrelu", gain=1, act before dim); StyleGAN code
calls bias_act(x, b, dim, act, alpha, gain, clamp) and relies on its defaults: act "linear",
a per-activation default gain (sqrt(2) for relu, lrelu and swish, 1 for the rest, so a
ReLU-family layer keeps unit variance) and alpha (0.2 for lrelu; every other activation ignores
alpha, elu included, which is always torch's elu with alpha 1). Swapping gk.ops.bias_act in
under the StyleGAN name would silently scale those layers by 1/sqrt(2); this module is the
swap that keeps the function.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..ops.bias_act import bias_act as _gk_bias_act

# name -> (gankern act, default alpha or None if StyleGAN ignores alpha, default gain)
ACTIVATIONS = {
    "linear": ("linear", None, 1.0),
    "relu": ("relu", None, math.sqrt(2)),
    "lrelu": ("lrelu", 0.2, math.sqrt(2)),
    "tanh": ("tanh", None, 1.0),
    "sigmoid": ("sigmoid", None, 1.0),
    "elu": ("elu", None, 1.0),
    "selu": ("selu", None, 1.0),
    "softplus": ("softplus", None, 1.0),
    "swish": ("silu", None, math.sqrt(2)),
}
# StyleGAN's impl names: "ref" is its plain-PyTorch path; "cuda" is its fused kernel where the
# tensors are on a GPU and the plain path elsewhere, which is what gankern's "auto" picks.
_IMPLS = {"ref": "reference", "cuda": "auto"}


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None, impl: str = "auto") -> torch.Tensor:
    """clamp(act(x + b) * gain, -clamp, clamp) with StyleGAN2-ADA's argument order and defaults.

    act: linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus or swish.
    alpha: the lrelu slope (default 0.2); ignored by every other activation, as in StyleGAN.
    gain: None means the activation's default (sqrt(2) for relu, lrelu, swish; 1 otherwise).
    clamp: None disables the clamp; it applies after the gain, to [-clamp, clamp]. A negative
    clamp is a ValueError (StyleGAN asserts clamp >= 0; its -1 "no clamp" is internal only).
    impl: "ref", "cuda" (StyleGAN's names) or any gankern backend name, "auto" by default.
    First- and second-order gradients are fused, as in StyleGAN's CUDA op.
    """
    if not isinstance(act, str):
        raise TypeError(f"act must be a str, got {type(act).__name__}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {tuple(ACTIVATIONS)} (StyleGAN2-ADA's names), got {act!r}")
    gk_act, default_alpha, default_gain = ACTIVATIONS[act]
    if default_alpha is None:
        alpha = None  # StyleGAN ignores it; gankern's own default (elu: 1.0) is StyleGAN's function
    elif alpha is None:
        alpha = default_alpha
    if gain is None:
        gain = default_gain
    if isinstance(impl, str):
        impl = _IMPLS.get(impl, impl)
    return _gk_bias_act(x, b, gk_act, alpha, gain, clamp, dim, impl)
