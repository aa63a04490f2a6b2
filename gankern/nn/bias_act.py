"""gk.nn.BiasAct and gk.nn.fuse_bias_act: the fused bias+activation as a module, and the
converter that puts it into an existing discriminator.

A D written as Conv(bias=True) -> LeakyReLU pays for a separate bias add and activation in
every forward, backward and (for a gradient penalty) double backward, each saving its own
input. fuse_bias_act rewrites such pairs inside nn.Sequential containers into a bias-free
layer followed by BiasAct holding the *same* bias Parameter, so the function, the optimizer's
references and its state are unchanged; only the bias's state_dict key moves to the BiasAct.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.bias_act import bias_act

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d)


class BiasAct(nn.Module):
    """y = clamp(act(x + bias) * gain, -clamp, clamp), bias along `dim` (1 for conv, -1 for linear)."""

    def __init__(self, num_channels: Optional[int] = None, act: str = "lrelu", alpha: Optional[float] = None,
                 gain: float = 1.0, clamp: Optional[float] = None, dim: int = 1, bias=True,
                 impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if isinstance(bias, nn.Parameter):
            self.bias = bias
        elif bias is True:
            if not isinstance(num_channels, int) or num_channels < 1:
                raise ValueError(f"num_channels must be a positive int when bias=True, got {num_channels!r}")
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        elif bias is False or bias is None:
            self.register_parameter("bias", None)
        else:
            raise TypeError(f"bias must be a bool or an nn.Parameter, got {type(bias).__name__}")
        self.act, self.alpha, self.gain, self.clamp, self.dim, self.impl = act, alpha, gain, clamp, dim, impl
        # Fail at construction, not at the first forward.
        from ..ops.bias_act import check_bias_act_args

        check_bias_act_args(torch.zeros(1), None, act, alpha, gain, clamp, 0)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias, self.act, self.alpha, self.gain, self.clamp, self.dim, self.impl)

    def extra_repr(self) -> str:
        n = None if self.bias is None else self.bias.shape[0]
        s = f"{n}, act={self.act!r}, dim={self.dim}"
        if self.alpha is not None:
            s += f", alpha={self.alpha}"
        if self.gain != 1.0:
            s += f", gain={self.gain}"
        if self.clamp is not None:
            s += f", clamp={self.clamp}"
        return s


def _act_of(module: nn.Module):
    """(act, alpha) for an activation module BiasAct computes identically, else None."""
    if type(module) is nn.ReLU:
        return "relu", None
    if type(module) is nn.LeakyReLU:
        return "lrelu", float(module.negative_slope)
    if type(module) is nn.Tanh:
        return "tanh", None
    if type(module) is nn.Sigmoid:
        return "sigmoid", None
    if type(module) is nn.SiLU:
        return "silu", None
    if type(module) is nn.Softplus and module.beta == 1 and module.threshold == 20:
        return "softplus", None
    if type(module) is nn.ELU:
        return "elu", float(module.alpha)
    return None


def fuse_bias_act(model: nn.Module, impl: str = "auto") -> nn.Module:
    """In place: every (Linear/Conv with bias, supported activation) pair that follows each other
    in an nn.Sequential becomes (the layer without bias, BiasAct with that bias). Returns model.

    Supported activations: ReLU, LeakyReLU, Tanh, Sigmoid, SiLU, Softplus (beta 1, threshold
    20), ELU. Modules with a custom forward() are left alone: only a Sequential fixes the order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules.keys())
        for first, second in zip(names, names[1:]):
            layer, act_module = seq._modules[first], seq._modules[second]
            found = _act_of(act_module) if act_module is not None else None
            if not isinstance(layer, _LAYERS) or layer.bias is None or found is None:
                continue
            bias = layer.bias
            layer.register_parameter("bias", None)
            dim = -1 if isinstance(layer, nn.Linear) else 1
            seq._modules[second] = BiasAct(act=found[0], alpha=found[1], dim=dim, bias=bias, impl=impl)
    return model
