"""Small generator and discriminator builders for the built-in demos and `gankern train`, and
the plain-data description (spec) a checkpoint uses to rebuild a model.

The built-in models carry a `gankern_spec` (builder name + arguments). A plain nn.Sequential of
torch.nn's own layers (SEQUENTIAL_LAYERS) gets a spec too, read from its layers' constructor
attributes, so GANTrainer.load(path) needs no model code for either; the checkpoint stays
weights_only (no pickled classes). Any other nn.Module works with the trainer as well and is
then passed to load() explicitly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


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


def _conv_args(m):
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}


def _norm_args(m):
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


# torch.nn layer -> its constructor arguments as plain data. Only layers whose whole state is
# these arguments plus their state_dict, so the rebuilt layer is the same function.
SEQUENTIAL_LAYERS = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: _conv_args,
    nn.ConvTranspose2d: lambda m: dict(_conv_args(m), output_padding=list(m.output_padding)),
    nn.BatchNorm1d: _norm_args,
    nn.BatchNorm2d: _norm_args,
    nn.LayerNorm: lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                             "elementwise_affine": m.elementwise_affine},
    nn.ReLU: lambda m: {},
    nn.LeakyReLU: lambda m: {"negative_slope": m.negative_slope},
    nn.ELU: lambda m: {"alpha": m.alpha},
    nn.SiLU: lambda m: {},
    nn.GELU: lambda m: {"approximate": m.approximate},
    nn.Tanh: lambda m: {},
    nn.Sigmoid: lambda m: {},
    nn.Softplus: lambda m: {"beta": m.beta, "threshold": m.threshold},
    nn.Identity: lambda m: {},
    nn.Dropout: lambda m: {"p": m.p},
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.Unflatten: lambda m: {"dim": m.dim, "unflattened_size": list(m.unflattened_size)},
}
_LAYERS_BY_NAME = {cls.__name__: cls for cls in SEQUENTIAL_LAYERS}
_TUPLE_ARGS = ("kernel_size", "stride", "padding", "dilation", "output_padding", "normalized_shape",
               "unflattened_size")


def _sequential_spec(module: nn.Module):
    if type(module) is not nn.Sequential:
        return None
    layers = []
    for layer in module:
        cls = type(layer)
        if parametrize.is_parametrized(layer):
            # spectral_norm=True made it Parametrized<cls>; the trainer re-applies SN on load.
            cls = cls.__bases__[0]
        describe = SEQUENTIAL_LAYERS.get(cls)
        if describe is None:
            return None
        layers.append([cls.__name__, describe(layer)])
    return {"builder": "sequential", "layers": layers}


def _build_sequential(layers) -> nn.Sequential:
    out = []
    for name, args in layers:
        if name not in _LAYERS_BY_NAME:
            raise ValueError(f"not a gankern model spec: unknown layer {name!r}")
        args = {k: (tuple(v) if k in _TUPLE_ARGS and isinstance(v, list) else v) for k, v in args.items()}
        out.append(_LAYERS_BY_NAME[name](**args))
    return nn.Sequential(*out)


BUILDERS = {"mlp_generator": MLPGenerator, "mlp_discriminator": MLPDiscriminator,
            "sequential": _build_sequential}


def build(spec: dict) -> nn.Module:
    """The module a spec (spec_of) describes."""
    if not isinstance(spec, dict) or spec.get("builder") not in BUILDERS:
        raise ValueError(f"not a gankern model spec: {spec!r}")
    args = {k: v for k, v in spec.items() if k != "builder"}
    return BUILDERS[spec["builder"]](**args)


def spec_of(module: nn.Module):
    """A plain-data description build() turns back into the module, or None for custom code."""
    return getattr(module, "gankern_spec", None) or _sequential_spec(module)


def infer_z_dim(G: nn.Module):
    """G's latent size: G.z_dim, else the in_features of G's first layer when that is a Linear
    (an nn.Sequential starting with nn.Linear(z_dim, ...)); None when neither says."""
    z_dim = getattr(G, "z_dim", None)
    if z_dim is not None:
        return z_dim
    first = next((m for m in G.modules() if not list(m.children())), None)
    return first.in_features if isinstance(first, nn.Linear) else None
