"""The direct weight read of gk.spectral_norm layers (gankern/nn/spectral_norm_read.py): the same
tensors, u/v updates and gradients as parametrize's own getter, and parametrize's own getter
wherever a module call could be observed (hooks, parametrize.cached(), a second
parametrization, torch's SN on a class shared with a converted copy)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import gankern as gk
from gankern.nn import spectral_norm_read


def _layer(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return gk.spectral_norm(nn.Conv2d(3, 6, 3).to(dtype))


def _getter(layer):
    return type(layer).__dict__["weight"].fget


def _sn(layer):
    return layer.parametrizations.weight[0]


def test_gankern_layers_get_the_direct_read():
    layer = _layer()
    assert getattr(_getter(layer), "gankern_direct_read", False)
    spectral_norm_read.install(layer, "weight", type(_sn(layer)))  # idempotent: not wrapped twice
    assert _getter(layer).torch_getter.__name__ == "get_parametrized"


@pytest.mark.parametrize("training", [True, False])
def test_same_weight_vectors_and_gradient_as_parametrize_getter(training):
    a = _layer(1).train(training)
    b = copy.deepcopy(a)
    torch_getter = _getter(a).torch_getter
    for _ in range(3):
        wa, wb = a.weight, torch_getter(b)
        assert torch.equal(wa, wb)
        for name in ("_u", "_v"):
            assert torch.equal(getattr(_sn(a), name), getattr(_sn(b), name))
        cot = torch.randn_like(wa)
        (ga,) = torch.autograd.grad(wa, a.parametrizations.weight.original, cot)
        (gb,) = torch.autograd.grad(wb, b.parametrizations.weight.original, cot)
        assert torch.equal(ga, gb)


def test_a_deepcopy_reads_its_own_parametrization():
    a = _layer(2)
    b = copy.deepcopy(a)
    assert type(a) is type(b)  # parametrize's class is shared by the copy
    u_a = _sn(a)._u.clone()
    with torch.no_grad():
        b.parametrizations.weight.original.mul_(2.0)
    b.weight  # iterates b's u, v only
    assert torch.equal(_sn(a)._u, u_a) and not torch.equal(_sn(b)._u, u_a)
    assert torch.allclose(b.weight, a.weight, rtol=1e-6)  # W / sigma does not see the factor 2


def _count_calls(register):
    calls = []
    handle = register(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("where", ["sn forward hook", "sn pre-hook", "list forward hook", "global hook"])
def test_hooks_see_the_module_calls_they_would_see_under_torch(where):
    layer = _layer(3)
    plist = layer.parametrizations.weight
    register = {"sn forward hook": _sn(layer).register_forward_hook,
                "sn pre-hook": _sn(layer).register_forward_pre_hook,
                "list forward hook": plist.register_forward_hook,
                "global hook": nn.modules.module.register_module_forward_hook}[where]
    calls, handle = _count_calls(register)
    try:
        layer.weight
        layer(torch.randn(1, 3, 5, 5, dtype=torch.float64))
    finally:
        handle.remove()
    # Two weight reads (one here, one in the layer's forward), each a call of the list and of the
    # SN module under torch; a global hook also sees the layer's own call.
    assert len(calls) == (5 if where == "global hook" else 2)


def test_parametrize_cached_returns_one_tensor_per_context():
    layer = _layer(4).eval()
    with parametrize.cached():
        assert layer.weight is layer.weight
    assert layer.weight is not layer.weight


def test_a_second_parametrization_composes_as_in_torch():
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    layer = _layer(5).eval()
    parametrize.register_parametrization(layer, "weight", Double())
    want = 2 * _sn(layer)(layer.parametrizations.weight.original)
    assert torch.equal(layer.weight, want)


def test_torch_sn_sharing_the_class_with_a_converted_copy_is_still_torch():
    torch.manual_seed(6)
    plain = torch.nn.utils.parametrizations.spectral_norm(nn.Linear(5, 4).double())
    converted = gk.convert_spectral_norm(copy.deepcopy(plain), group=False)
    assert type(plain) is type(converted) and getattr(_getter(plain), "gankern_direct_read", False)
    fresh = copy.deepcopy(plain)
    w_plain = plain.weight  # torch's _SpectralNorm through the shared property
    w_fresh = _getter(fresh).torch_getter(fresh)
    assert torch.equal(w_plain, w_fresh)
    # gankern's fused math from the same u, v: torch's result to rounding.
    torch.testing.assert_close(converted.weight, w_fresh, rtol=1e-12, atol=0)


def test_remove_parametrizations_leaves_a_plain_layer():
    layer = _layer(7).eval()
    w = layer.weight.detach().clone()
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    assert type(layer) is nn.Conv2d and isinstance(layer.weight, nn.Parameter)
    torch.testing.assert_close(layer.weight.detach(), w, rtol=1e-12, atol=0)  # no_grad vs grad eval paths round apart
