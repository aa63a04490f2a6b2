"""gk.convert_spectral_norm: torch's parametrization SN and legacy hook SN -> gankern's, in place.

The converted model keeps its weights and u/v tensors, so its outputs equal the original's;
after conversion it keeps training like the original (legacy hook layers keep their v-first order).
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import spectral_norm as legacy_sn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from conftest import backends_for

import gankern as gk
from gankern.nn.spectral_norm import SpectralNorm
from gankern.ops import spectral_norm as sn_ops
from gankern.testing import rel_error

BACKENDS = backends_for(sn_ops.IMPLEMENTED)


def small_d(wrap):
    torch.manual_seed(0)
    return nn.Sequential(wrap(nn.Conv2d(3, 4, 3, padding=1)), nn.LeakyReLU(0.2),
                         wrap(nn.ConvTranspose2d(4, 5, 3)), nn.Flatten(),
                         wrap(nn.Linear(5 * 8 * 8, 1))).double()


def x_in(seed=0):
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
def test_convert_parametrization(backend, train):
    ref = small_d(torch_sn).train(train)
    model = copy.deepcopy(ref)
    keys = list(model.state_dict())
    buffers_before = [b for n, b in model.named_buffers()]
    assert gk.convert_spectral_norm(model, impl=backend) is model
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(buffers_before, [b for n, b in model.named_buffers()]))
    assert sum(isinstance(m, SpectralNorm) for m in model.modules()) == 3
    for step in range(3):
        ya, yb = ref(x_in(step)), model(x_in(step))
        assert rel_error(yb, ya) <= 1e-12
        ya.sum().backward()
        yb.sum().backward()
        for (n, pa), pb in zip(ref.named_parameters(), model.parameters()):
            assert rel_error(pb.grad, pa.grad) <= 1e-12, n


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_legacy_hook(backend):
    ref = small_d(legacy_sn)
    with torch.no_grad():  # legacy SN cannot be deepcopied while module.weight has a graph
        ref(x_in(0))  # one training power iteration of the legacy hook first
    model = copy.deepcopy(ref)
    u_before = model[0].weight_u
    gk.convert_spectral_norm(model, impl=backend)
    assert model[0].parametrizations.weight[0]._u is u_before
    assert model[0].parametrizations.weight[0].legacy_order
    assert "0.parametrizations.weight.original" in model.state_dict()
    ref.eval()
    model.eval()
    with torch.no_grad():
        assert rel_error(model(x_in(1)), ref(x_in(1))) <= 1e-12
    # Training on keeps the legacy order (v before u): outputs, gradients and u, v stay equal.
    ref.train()
    model.train()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, model)]
    for step in range(3):
        ys = [m(x_in(2 + step)) for m in (ref, model)]
        assert rel_error(ys[1], ys[0]) <= 1e-12, f"step {step}"
        for y, opt in zip(ys, opts):
            opt.zero_grad()
            y.square().sum().backward()
            opt.step()
        for i in (0, 2, 4):
            sn = model[i].parametrizations.weight[0]
            assert rel_error(sn._u, ref[i].weight_u) <= 1e-12 and rel_error(sn._v, ref[i].weight_v) <= 1e-12
            assert rel_error(model[i].parametrizations.weight.original, ref[i].weight_orig) <= 1e-12


def test_convert_bad_input():
    with pytest.raises(TypeError, match="model"):
        gk.convert_spectral_norm(3)
    with pytest.raises(TypeError, match="impl"):
        gk.convert_spectral_norm(nn.Linear(2, 2), impl=None)


@pytest.mark.parametrize("channels, fused", [(8, False), (96, True)])
def test_converted_legacy_layer_under_auto_takes_torch_math_below_the_crossover(channels, fused, monkeypatch):
    # gankern/nn/spectral_norm.py LEGACY_FUSED_FROM (scripts/crossover.py sn_legacy): below it,
    # a legacy-order layer's training forward is torch's math; above, sigma and W/sigma are fused.
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    calls = []
    real_sigma = sn_ops.sigma
    monkeypatch.setattr(sn_ops, "sigma", lambda *a: calls.append(1) or real_sigma(*a))
    torch.manual_seed(0)
    ref = legacy_sn(nn.Conv2d(channels, channels, 3, padding=1).double())
    with torch.no_grad():
        model = gk.convert_spectral_norm(nn.Sequential(copy.deepcopy(ref)))[0]
    x = torch.randn(2, channels, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for m in (ref, model):
        m(x).square().sum().backward()
    assert bool(calls) == fused
    assert rel_error(model.parametrizations.weight.original.grad, ref.weight_orig.grad) <= 1e-12
    assert rel_error(model.parametrizations.weight[0]._u, ref.weight_u) <= 1e-12
