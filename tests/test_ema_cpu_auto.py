"""impl="auto" for the EMA on a CPU (issue 16): lists whose shadow and params share a dtype are
updated by torch._foreach_lerp_ (same bytes, and the kernel measured slower), lists with 16-bit
params keep the kernel; a backend named in the call or in GANKERN_IMPL runs the kernel. The
kernel and torch's loop compute the same two-sided lerp (bit for bit in the release build, where
both contract it to an FMA; within an ulp in the sanitizer builds, which do not), so the choice
changes no result."""

import sys

import pytest
import torch

import gankern as gk
from gankern import _native
from gankern.ops.ema import PlannedEmaUpdate, ema_update_

pytestmark = pytest.mark.skipif(not _native.available("cpu"), reason="native CPU extension not built")
ema_module = sys.modules["gankern.ops.ema"]
SHAPES = [(), (7,), (33, 5), (4, 3, 3, 3), (70000,)]


def _assert_same(got, want):
    """Equal to the last bit or two: the release build's FMA and a sanitizer build's multiply-add
    round differently in the last place."""
    for a, b in zip(got, want):
        eps = torch.finfo(a.dtype).eps
        torch.testing.assert_close(a, b, rtol=2 * eps, atol=2 * eps * float(b.abs().max()))


def _lists(param_dtype, shadow_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(param_dtype) for s in SHAPES]
    shadow = [(p.double() + 1e-2 * torch.randn(s, generator=g, dtype=torch.float64)).to(shadow_dtype)
              for p, s in zip(params, SHAPES)]
    return shadow, params


@pytest.fixture
def paths(monkeypatch):
    """Records which path ran: 'foreach' (torch._foreach_lerp_) or 'kernel' (gankern._C)."""
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    ran = []
    foreach, launch = ema_module._foreach_same_dtype, _native._ema_launch
    monkeypatch.setattr(ema_module, "_foreach_same_dtype", lambda *a: ran.append("foreach") or foreach(*a))
    monkeypatch.setattr(_native, "_ema_launch", lambda *a, **k: ran.append("kernel") or launch(*a, **k))
    return ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_dtype_lists_take_foreach_under_auto_with_the_kernels_bits(dtype, paths):
    shadow, params = _lists(dtype, dtype)
    by_kernel = [s.clone() for s in shadow]
    ema_update_(shadow, params, 0.001)
    ema_update_(by_kernel, params, 0.001, impl="cpu")
    assert paths == ["foreach", "kernel"]
    _assert_same(shadow, by_kernel)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_params_keep_the_kernel(dtype, paths):
    shadow, params = _lists(dtype)
    ema_update_(shadow, params, 0.01)
    assert paths == ["kernel"]


def test_a_named_backend_runs_the_kernel(paths, monkeypatch):
    shadow, params = _lists(torch.float32)
    ema_update_(shadow, params, 0.01, impl="cpu")
    monkeypatch.setenv("GANKERN_IMPL", "cpu")
    ema_update_(shadow, params, 0.01)
    assert paths == ["kernel", "kernel"]


def test_planned_update_and_module_follow_the_same_rule(paths):
    shadow, params = _lists(torch.float32)
    by_kernel = [s.clone() for s in shadow]
    PlannedEmaUpdate(shadow, params)(0.002)
    PlannedEmaUpdate(by_kernel, params, impl="cpu")(0.002)
    assert paths == ["foreach", "kernel"]
    _assert_same(shadow, by_kernel)
    model = torch.nn.Linear(5, 3)
    ema = gk.EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    assert paths[-1] == "foreach"
    torch.testing.assert_close(ema.module.weight, model.weight - 0.9, rtol=0, atol=1e-6)


def test_a_tensor_weight_works_on_the_foreach_path(paths):
    shadow, params = _lists(torch.float32)
    by_kernel = [s.clone() for s in shadow]
    ema_update_(shadow, params, torch.tensor(0.25))
    ema_update_(by_kernel, params, torch.tensor(0.25), impl="cpu")
    assert paths == ["foreach", "kernel"]
    _assert_same(shadow, by_kernel)


def test_planned_update_follows_params_that_change_dtype(paths):
    """The choice is made per call: params whose .data becomes fp16 after the plan was made take
    the kernel (a float32 shadow of fp16 params), never torch's loop, which would stop part-way."""
    params = [torch.nn.Parameter(torch.ones(3), requires_grad=False) for _ in range(3)]
    shadow = [torch.zeros(3) for _ in range(3)]
    update = PlannedEmaUpdate(shadow, params)
    update(0.5)
    params[1].data = params[1].data.half()
    update(0.5)
    assert paths == ["foreach", "kernel"]
    assert all(torch.equal(s, torch.full((3,), 0.75)) for s in shadow)
