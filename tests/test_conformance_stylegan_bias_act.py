"""gankern.compat.stylegan.bias_act behaves as StyleGAN2-ADA / StyleGAN3's
torch_utils.ops.bias_act.bias_act is documented to behave.

What that function promises, restated here in this test's own words and formulas:
- signature bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl);
- y = x + b (b broadcast along dim), then the activation, then times gain, then clamped to
  [-clamp, clamp] when clamp is not None (it must be >= 0 otherwise);
- activations and their defaults (alpha / gain):
  linear -, 1 | relu -, sqrt2 | lrelu 0.2, sqrt2 | tanh -, 1 | sigmoid -, 1 | elu -, 1 |
  selu -, 1 | softplus -, 1 | swish -, sqrt2; only lrelu reads alpha (elu is torch's elu, alpha 1);
- first- and second-order gradients.
The formulas below are spelled out with exp/log in float64, not borrowed from gankern.
"""

import math

import pytest
import torch
from conftest import DEVICE, backends_for
from torch import nn

from gankern.compat import stylegan
from gankern.ops.bias_act import IMPLEMENTED

BACKENDS = backends_for(IMPLEMENTED)
SQRT2 = math.sqrt(2.0)
SELU_LAMBDA, SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
DEFAULT_GAIN = {"linear": 1.0, "relu": SQRT2, "lrelu": SQRT2, "tanh": 1.0, "sigmoid": 1.0, "elu": 1.0,
                "selu": 1.0, "softplus": 1.0, "swish": SQRT2}


def activation(z, act, alpha):
    neg = z <= 0
    if act == "linear":
        return z
    if act == "relu":
        return torch.where(neg, torch.zeros_like(z), z)
    if act == "lrelu":
        return torch.where(neg, alpha * z, z)
    if act == "tanh":
        return (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z))
    if act == "sigmoid":
        return 1 / (1 + torch.exp(-z))
    if act == "elu":
        return torch.where(neg, torch.exp(torch.clamp(z, max=0)) - 1, z)
    if act == "selu":
        return SELU_LAMBDA * torch.where(neg, SELU_ALPHA * (torch.exp(torch.clamp(z, max=0)) - 1), z)
    if act == "softplus":  # torch's softplus: log(1 + e^z), and z itself above 20
        return torch.where(z > 20, z, torch.log(1 + torch.exp(torch.clamp(z, max=20))))
    if act == "swish":
        return z / (1 + torch.exp(-z))
    raise AssertionError(act)


def formula(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """The documented function, float64, with the documented defaults."""
    alpha = 0.2 if alpha is None else alpha
    gain = DEFAULT_GAIN[act] if gain is None else gain
    z = x if b is None else x + b.reshape([-1 if i == dim % x.dim() else 1 for i in range(x.dim())])
    y = activation(z, act, alpha) * gain
    return y if clamp is None else torch.minimum(torch.maximum(y, torch.full_like(y, -clamp)),
                                                 torch.full_like(y, clamp))


def three_orders(fn, x, b, dy, v):
    """y, (dx, db) = d<dy, y>/d(x, b), and d<v, dx>/d(x, b, dy): everything a penalty uses."""
    x, b, dy = (t.detach().requires_grad_(True) for t in (x, b, dy))
    y = fn(x, b)
    dx, db = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    second = torch.autograd.grad(dx, (x, b, dy), v, allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, (x, b, dy))]
    return [t.detach() for t in (y, dx, db, *second)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", list(DEFAULT_GAIN))
def test_every_activation_three_orders_with_defaults(act, backend):
    gen = torch.Generator().manual_seed(len(act))
    # (batch 3, channels 5, 7 x 3) with values up to ~ +-25 so softplus's linear branch is hit.
    x = torch.randn(3, 5, 7, 3, generator=gen, dtype=torch.float64) * 6
    b, dy, v = torch.randn(5, generator=gen, dtype=torch.float64), torch.randn_like(x), torch.randn_like(x)
    x, b, dy, v = (t.to(DEVICE) for t in (x, b, dy, v))
    ref = three_orders(lambda x, b: formula(x, b, 1, act), x, b, dy, v)
    got = three_orders(lambda x, b: stylegan.bias_act(x, b, 1, act, impl=backend), x, b, dy, v)
    for name, g, r in zip(["y", "dx", "db", "d2x", "d2b", "d2dy"], got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=f"{act} {name}")
    # float32 in, float32 out, close to the float64 formula.
    y32 = stylegan.bias_act(x.float(), b.float(), 1, act, impl=backend)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_defaults_positional_order_alpha_and_clamp(backend):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 6, 5, generator=gen, dtype=torch.float64) * 3).to(DEVICE)
    b = torch.randn(6, generator=gen, dtype=torch.float64).to(DEVICE)
    b0 = torch.randn(4, generator=gen, dtype=torch.float64).to(DEVICE)

    def check(got, expected):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

    # No act given: linear, gain 1, so just x + b (gankern's own default would be lrelu).
    check(stylegan.bias_act(x, b, impl=backend), x + b[:, None])
    check(stylegan.bias_act(x, impl=backend), x)
    # relu / lrelu / swish default to gain sqrt(2); lrelu to slope 0.2.
    check(stylegan.bias_act(x, b, act="relu", impl=backend), torch.relu(x + b[:, None]) * SQRT2)
    check(stylegan.bias_act(x, b, act="lrelu", impl=backend),
          torch.where(x + b[:, None] > 0, x + b[:, None], 0.2 * (x + b[:, None])) * SQRT2)
    # Positional order (x, b, dim, act, alpha, gain, clamp): bias along dim 0 here.
    check(stylegan.bias_act(x, b0, 0, "lrelu", 0.1, 3.0, 0.5, impl=backend),
          formula(x, b0, 0, "lrelu", 0.1, 3.0, 0.5))
    # alpha means nothing to elu (always alpha 1) nor to the others.
    for act in ("elu", "selu", "tanh", "swish", "relu"):
        check(stylegan.bias_act(x, b, 1, act, 0.5, impl=backend), formula(x, b, 1, act))
    # An explicit gain replaces the default one, also for relu.
    check(stylegan.bias_act(x, b, act="relu", gain=1.0, impl=backend), torch.relu(x + b[:, None]))
    # The clamp applies after the gain, symmetric; outside it the gradient is zero.
    xr = x.detach().requires_grad_(True)
    y = stylegan.bias_act(xr, b, 1, "lrelu", None, 2.0, 1.5, impl=backend)
    z = x + b[:, None]
    u = torch.where(z > 0, z, 0.2 * z) * 2.0
    check(y, u.clamp(-1.5, 1.5))
    assert (y.abs() <= 1.5).all() and (u.abs() > 1.5).any() and (u < -1.5).any()
    (dx,) = torch.autograd.grad(y.sum(), xr)
    slope = torch.where(z > 0, torch.ones_like(z), torch.full_like(z, 0.2)) * 2.0
    check(dx, torch.where(u.abs() <= 1.5, slope, torch.zeros_like(z)))
    # clamp=0 pins everything to 0.
    check(stylegan.bias_act(x, b, 1, "swish", clamp=0.0, impl=backend), torch.zeros_like(x))


def test_impl_names_and_bad_input():
    x, b = torch.randn(2, 3, 4), torch.randn(3)
    expected = stylegan.bias_act(x, b, 1, "lrelu", impl="reference")
    for impl in ("ref", "cuda", "auto"):  # StyleGAN's names: its plain path, and its fused one
        torch.testing.assert_close(stylegan.bias_act(x, b, 1, "lrelu", impl=impl), expected)
    with pytest.raises(ValueError, match="act must be one of"):
        stylegan.bias_act(x, b, 1, "silu")  # StyleGAN calls it swish
    with pytest.raises(TypeError, match="act must be a str"):
        stylegan.bias_act(x, b, 1, None)
    with pytest.raises(ValueError, match="clamp"):
        stylegan.bias_act(x, b, 1, "lrelu", clamp=-1.0)  # StyleGAN asserts clamp >= 0
    with pytest.raises(ValueError, match="b must have"):
        stylegan.bias_act(x, torch.randn(4), 1, "lrelu")
    with pytest.raises(TypeError, match="b must have a dtype"):
        stylegan.bias_act(x, b.double(), 1, "lrelu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ["lrelu", "selu", "swish"])
def test_gradcheck_and_gradgradcheck_with_clamp(act, backend):
    x = (torch.randn(2, 3, 2, dtype=torch.float64, device=DEVICE) * 2).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    fn = lambda x, b: stylegan.bias_act(x, b, 1, act, None, None, 1.3, impl=backend)  # noqa: E731
    fast = backend == "triton"  # each interpreted launch costs ~10 ms
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=fast)


class FullyConnectedLayer(nn.Module):
    """Written the way StyleGAN2-ADA's networks.py writes it: equalized learning rate (weights
    stored unscaled, scaled in forward), bias scaled by the lr multiplier, activation through an
    injected bias_act with that library's call convention."""

    def __init__(self, bias_act, in_features, out_features, activation="linear", lr_multiplier=1.0,
                 bias_init=0.0):
        super().__init__()
        self.bias_act = bias_act
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return self.bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    """StyleGAN2-ADA's Conv2dLayer call convention: gain and clamp passed by keyword, the clamp
    scaled by the same gain, the activation's default gain looked up by the layer."""

    def __init__(self, bias_act, channels, activation="lrelu", conv_clamp=None):
        super().__init__()
        self.bias_act = bias_act
        self.activation, self.conv_clamp = activation, conv_clamp
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.randn(channels))
        self.act_gain = DEFAULT_GAIN[activation]

    def forward(self, x, gain=1.0):
        x = nn.functional.conv2d(x, self.weight / math.sqrt(self.weight[0].numel()), padding=1)
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return self.bias_act(x, self.bias, act=self.activation, gain=act_gain, clamp=act_clamp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stylegan_layers_with_the_compat_function_equal_the_formula(backend):
    torch.manual_seed(0)

    def swapped(*args, **kwargs):
        return stylegan.bias_act(*args, impl=backend, **kwargs)

    mapping = nn.ModuleList([FullyConnectedLayer(swapped, 8, 8, "lrelu", lr_multiplier=0.01, bias_init=0.5)
                             for _ in range(2)] + [FullyConnectedLayer(swapped, 8, 4)]).double().to(DEVICE)
    z = torch.randn(5, 8, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h = z
    for layer in mapping:
        h = layer(h)
    # The layer written out: lrelu(x W^T * lr/sqrt(in) + b * lr, 0.2) * sqrt(2), twice, then affine.
    e = z
    for i, layer in enumerate(mapping):
        pre = e @ (layer.weight * layer.weight_gain).t() + layer.bias * layer.bias_gain
        e = torch.where(pre > 0, pre, 0.2 * pre) * SQRT2 if i < 2 else pre
    torch.testing.assert_close(h, e, rtol=1e-12, atol=1e-12)
    # The first- and second-order gradients a path-length / R1 penalty would take agree too.
    (gh,) = torch.autograd.grad(h.square().sum(), z, create_graph=True)
    (ge,) = torch.autograd.grad(e.square().sum(), z, create_graph=True)
    torch.testing.assert_close(gh, ge, rtol=1e-10, atol=1e-12)
    w = mapping[0].weight
    torch.testing.assert_close(torch.autograd.grad(gh.square().sum(), w)[0],
                               torch.autograd.grad(ge.square().sum(), w)[0], rtol=1e-10, atol=1e-12)

    conv = Conv2dLayer(swapped, 4, "lrelu", conv_clamp=0.8).double().to(DEVICE)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    pre = nn.functional.conv2d(x, conv.weight / math.sqrt(36), padding=1) + conv.bias[:, None, None]
    for g in (1.0, 0.5):
        expected = (torch.where(pre > 0, pre, 0.2 * pre) * SQRT2 * g).clamp(-0.8 * g, 0.8 * g)
        torch.testing.assert_close(conv(x, gain=g), expected, rtol=1e-12, atol=1e-12)
