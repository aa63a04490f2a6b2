"""gk.nn.BiasAct and gk.nn.fuse_bias_act: the fused module and the converter keep the function,
the gradients and the bias Parameter itself."""

import copy

import pytest
import torch
from conftest import DEVICE, backends_for
from torch import nn

import gankern as gk
from gankern.nn.bias_act import DeferredBiasAct
from gankern.ops.bias_act import IMPLEMENTED

BACKENDS = backends_for(IMPLEMENTED)


def discriminator():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Sequential(nn.Conv2d(8, 6, 3, stride=2), nn.ELU(0.7)),
        nn.Conv2d(6, 5, 1), nn.Softplus(),
        nn.Conv2d(5, 4, 1, bias=False), nn.ReLU(),       # no bias: left alone
        nn.Conv2d(4, 4, 1), nn.Softplus(beta=2.0),       # not torch-default softplus: left alone
        nn.Flatten(), nn.Linear(4 * 3 * 3, 7), nn.Sigmoid(), nn.Linear(7, 6), nn.SiLU(),
        nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fuse_keeps_function_gradients_and_parameters(backend, channels_last):
    torch.manual_seed(0)
    D = discriminator().double().to(DEVICE)
    fused = copy.deepcopy(D)
    biases = [fused[0].bias, fused[2][0].bias]
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    gk.nn.fuse_bias_act(fused, impl=backend)
    kinds = [m.act for m in fused.modules() if isinstance(m, DeferredBiasAct)]
    assert kinds == ["lrelu", "elu", "softplus", "sigmoid", "silu", "tanh"]
    # The bias stays on its layer (same Parameter, same state_dict key); the act reads it there.
    assert fused[0].bias is biases[0] and fused[2][0].bias is biases[1]
    assert fused[1].layer is fused[0] and fused[2][1].layer is fused[2][0]
    assert list(fused.state_dict()) == list(D.state_dict())
    assert fused[1].alpha == 0.2 and fused[2][1].alpha == 0.7
    assert isinstance(fused[6], nn.ReLU) and isinstance(fused[8], nn.Softplus)
    # The optimizer built before fusing still holds every parameter.
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in fused.parameters()}

    x = torch.randn(3, 3, 7, 7, dtype=torch.float64, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y, yf = D(x), fused(x)
    torch.testing.assert_close(yf, y, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    yf.sum().backward()
    for (name, p), q in zip(D.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-11, atol=1e-12, msg=name)


def test_fuse_float32_identical_to_torch():
    torch.manual_seed(0)
    D = discriminator()
    fused = gk.nn.fuse_bias_act(copy.deepcopy(D))
    x = torch.randn(4, 3, 7, 7)
    torch.testing.assert_close(fused(x), D(x), rtol=1e-6, atol=1e-6)


def test_bias_act_module():
    m = gk.nn.BiasAct(5, act="silu", gain=2.0, clamp=3.0)
    assert m.bias.shape == (5,) and "silu" in repr(m)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        m.bias.normal_()
    expected = (torch.nn.functional.silu(x + m.bias[:, None]) * 2.0).clamp(-3, 3)
    torch.testing.assert_close(m(x), expected)
    assert gk.nn.BiasAct(act="relu", bias=False).bias is None


def test_bad_input():
    with pytest.raises(ValueError, match="num_channels"):
        gk.nn.BiasAct(None)
    with pytest.raises(ValueError, match="act must be one of"):
        gk.nn.BiasAct(4, act="gelu")
    with pytest.raises(TypeError, match="bias"):
        gk.nn.BiasAct(4, bias="yes")
    with pytest.raises(TypeError, match="model"):
        gk.nn.fuse_bias_act("D")
    D = discriminator()
    keys = list(D.state_dict())
    with pytest.raises(ValueError, match="impl"):
        gk.nn.fuse_bias_act(D, impl="nope")
    with pytest.raises(TypeError, match="return_report"):
        gk.nn.fuse_bias_act(D, return_report=1)
    # Nothing changed on error.
    assert not any(isinstance(m, DeferredBiasAct) for m in D.modules()) and list(D.state_dict()) == keys
    assert all("forward" not in m.__dict__ for m in D.modules())
    m = gk.nn.BiasAct(4, act="relu", dim=1)
    with pytest.raises(ValueError, match="b must have"):
        m(torch.randn(2, 3, 5))
