"""gk.ops.ema_update_ and gk.EMA reject bad input clearly, before changing anything."""

import re

import pytest
import torch
from conftest import DEVICE, backends_for

import gankern as gk
from gankern import _native
from gankern.ops.ema import IMPLEMENTED


def _pair(n=5, dtype=torch.float32):
    return [torch.randn(n, device=DEVICE, dtype=dtype)], [torch.randn(n, device=DEVICE, dtype=dtype)]


CASES = {
    "length mismatch": (lambda: ([torch.randn(3)], [torch.randn(3), torch.randn(3)], 0.1), ValueError, "same length"),
    "shape mismatch": (lambda: ([torch.randn(3)], [torch.randn(4)], 0.1), ValueError, "shape"),
    "integer params": (lambda: ([torch.randn(3)], [torch.ones(3, dtype=torch.int64)], 0.1), TypeError, "params[0]"),
    "integer shadow": (lambda: ([torch.ones(3, dtype=torch.int32)], [torch.randn(3)], 0.1), TypeError, "shadow[0]"),
    "bf16 shadow of fp32": (lambda: ([torch.randn(3).bfloat16()], [torch.randn(3)], 0.1), TypeError, "float32 shadow"),
    "non-contiguous": (lambda: ([torch.randn(4, 6).t()], [torch.randn(4, 6).t()], 0.1), ValueError, "contiguous"),
    "layout mismatch": (lambda: ([torch.randn(1, 2, 3, 4).to(memory_format=torch.channels_last)],
                                 [torch.randn(1, 2, 3, 4)], 0.1), ValueError, "layout"),
    "mixed devices": (lambda: ([torch.randn(3)], [torch.randn(3, device="meta")], 0.1), ValueError, "mixed devices"),
    "weight out of range": (lambda: ([torch.randn(3)], [torch.randn(3)], 1.5), ValueError, "weight"),
    "weight not a number": (lambda: ([torch.randn(3)], [torch.randn(3)], "0.1"), TypeError, "weight"),
    "weight not 0-d": (lambda: ([torch.randn(3)], [torch.randn(3)], torch.tensor([0.1])), ValueError, "weight"),
    "not a list": (lambda: (torch.randn(3), [torch.randn(3)], 0.1), TypeError, "shadow"),
    "not tensors": (lambda: ([torch.randn(3)], [[1.0, 2.0, 3.0]], 0.1), TypeError, "params[0]"),
}


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED, torch.device("cpu")))
@pytest.mark.parametrize("case", CASES)
def test_rejects_and_changes_nothing(backend, case):
    make, exc, needle = CASES[case]
    shadow, params, weight = make()
    before = [s.clone() for s in shadow if isinstance(s, torch.Tensor) and s.device.type != "meta"] \
        if isinstance(shadow, list) else []
    with pytest.raises(exc, match=re.escape(needle)):
        gk.ops.ema_update_(shadow, params, weight, impl=backend)
    for s, b in zip(shadow if isinstance(shadow, list) else [], before):
        assert torch.equal(s, b)


def test_shadow_aliasing_a_param_is_rejected():
    base = torch.randn(10)
    shadow, params = [base[:6]], [base[4:]]
    with pytest.raises(ValueError, match="overlaps"):
        gk.ops.ema_update_(shadow, params, 0.1)
    same = torch.randn(5)
    with pytest.raises(ValueError, match="overlaps"):
        gk.ops.ema_update_([same], [same], 0.1)


def test_shadows_aliasing_each_other_are_rejected():
    base = torch.randn(10)
    with pytest.raises(ValueError, match=r"shadow\[1\] overlaps shadow\[0\]"):
        gk.ops.ema_update_([base[:6], base[5:]], [torch.randn(6), torch.randn(5)], 0.1)
    with pytest.raises(ValueError, match=r"shadow\[0\] overlaps params\[1\]"):
        gk.ops.ema_update_([base[3:6], torch.randn(4)], [torch.randn(3), base[:4]], 0.1)


def test_params_may_share_memory():
    p = torch.randn(5)
    s1, s2 = torch.randn(5), torch.randn(5)
    gk.ops.ema_update_([s1, s2], [p, p], 1.0)
    assert torch.equal(s1, p) and torch.equal(s2, p)


def test_native_layer_checks_before_pointers():
    # The pointer boundary validates on its own too, whoever calls it.
    with pytest.raises(TypeError, match="params\\[0\\]"):
        _native.ema_update_([torch.randn(3)], [torch.ones(3, dtype=torch.int64)], 0.1)
    with pytest.raises(ValueError, match="shape"):
        _native.ema_update_([torch.randn(3)], [torch.randn(2)], 0.1)
    with pytest.raises(ValueError, match="overlaps"):
        t = torch.randn(4)
        _native.ema_update_([t], [t], 0.1)


@pytest.mark.parametrize("kwargs,exc,needle", [
    ({"decay": 1.5}, ValueError, "decay"),
    ({"decay": "0.9"}, ValueError, "decay"),
    ({"update_every": 0}, ValueError, "update_every"),
    ({"update_after_step": -1}, ValueError, "update_after_step"),
    ({"buffers": "mean"}, ValueError, "buffers"),
    ({"shadow_dtype": torch.int32}, TypeError, "shadow_dtype"),
    ({"impl": 3}, TypeError, "impl"),
])
def test_ema_module_rejects_bad_config(kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        gk.EMA(torch.nn.Linear(3, 3), **kwargs)


def test_ema_module_rejects_a_different_model():
    ema = gk.EMA(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="parameters do not match"):
        ema.update(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="shape"):
        ema.update(torch.nn.Linear(3, 4))
    assert ema.step == 0


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED, torch.device("cpu")))
def test_empty_lists_are_refused_like_foreach_lerp(backend):
    with pytest.raises(RuntimeError):  # what torch does
        torch._foreach_lerp_([], [], 0.5)
    with pytest.raises(ValueError, match="shadow and params are empty"):
        gk.ops.ema_update_([], [], 0.5, impl=backend)


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED, torch.device("cpu")))
def test_shadow_that_requires_grad_is_refused_in_grad_mode_only(backend):
    leaf = torch.randn(5, requires_grad=True)
    params = [torch.randn(5)]
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):  # torch's refusal
        torch._foreach_lerp_([leaf], params, 0.5)
    with pytest.raises(ValueError, match=re.escape("shadow[0] requires grad")) as info:
        gk.ops.ema_update_([leaf], params, 0.5, impl=backend)
    assert isinstance(info.value, RuntimeError)  # caught where torch's error would be
    assert torch.equal(leaf.detach(), before)
    non_leaf = torch.randn(5, requires_grad=True) * 1.0  # torch would record the lerp; ours is not differentiable
    with pytest.raises(ValueError, match=re.escape("shadow[1] requires grad")):
        gk.ops.ema_update_([torch.randn(5), non_leaf], params * 2, 0.5, impl=backend)
    with torch.no_grad():  # as torch allows (optimizers, EMAs)
        gk.ops.ema_update_([leaf], params, 0.5, impl=backend)
        expected = before.clone().lerp_(params[0], 0.5)
    assert torch.allclose(leaf.detach(), expected, rtol=1e-6, atol=0)
