"""Small generator and discriminator builders for the built-in demos and `gankern train`.

They carry a `gankern_spec` (builder name + arguments) so a checkpoint can rebuild them:
GANTrainer.load(path) then needs no model code. Any other nn.Module works with the trainer too;
it is then passed to load() explicitly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


# G's hidden activation. ReLU lets G map whole regions of z onto one point (dead units are flat),
# which is what sharp, well-separated modes need; LeakyReLU never flattens.
ACTIVATIONS = {"lrelu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU}


class MLPGenerator(nn.Module):
    """z (B, z_dim) -> samples (B, *out_shape); MLP (act: lrelu or relu), tanh output for images."""

    def __init__(self, z_dim: int = 2, out_shape=(2,), hidden: int = 128, layers: int = 3,
                 tanh: bool = False, act: str = "lrelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
        self.z_dim = z_dim
        self.out_shape = tuple(out_shape)
        dims = [z_dim] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), ACTIVATIONS[act]()]
        body.append(nn.Linear(dims[-1], math.prod(self.out_shape)))
        if tanh:
            body.append(nn.Tanh())
        self.net = nn.Sequential(*body)
        self.gankern_spec = {"builder": "mlp_generator", "z_dim": z_dim, "out_shape": list(self.out_shape),
                             "hidden": hidden, "layers": layers, "tanh": tanh, "act": act}

    def forward(self, z):
        return self.net(z).reshape(z.shape[0], *self.out_shape)


class MLPDiscriminator(nn.Module):
    """samples (B, *in_shape) -> one score per sample (B,).

    in_scale multiplies the input first. With spectral norm every layer is 1-Lipschitz, so D is
    in_scale-Lipschitz: SNGAN's Lipschitz constant K, which must match the data's length scale
    (the ring's modes are 0.02 wide: a 1-Lipschitz D barely tells them from the gaps).
    """

    def __init__(self, in_shape=(2,), hidden: int = 128, layers: int = 3, in_scale: float = 1.0):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.in_scale = float(in_scale)
        dims = [math.prod(self.in_shape)] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        body.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*body)
        self.gankern_spec = {"builder": "mlp_discriminator", "in_shape": list(self.in_shape),
                             "hidden": hidden, "layers": layers, "in_scale": self.in_scale}

    def forward(self, x):
        return self.net(self.in_scale * x.reshape(x.shape[0], -1)).squeeze(1)


BUILDERS = {"mlp_generator": MLPGenerator, "mlp_discriminator": MLPDiscriminator}


def build(spec: dict) -> nn.Module:
    """The module a gankern_spec describes."""
    if not isinstance(spec, dict) or spec.get("builder") not in BUILDERS:
        raise ValueError(f"not a gankern model spec: {spec!r}")
    args = {k: v for k, v in spec.items() if k != "builder"}
    return BUILDERS[spec["builder"]](**args)


def spec_of(module: nn.Module):
    return getattr(module, "gankern_spec", None)
