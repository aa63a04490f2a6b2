"""impl="auto" for the EMA on a CPU (issue 16): every dtype pair runs the native kernel, which
measured faster than torch._foreach_lerp_ once the Python in front of it was cut to what an
update needs (see the comment on EmaPlan in gankern/_native.py). The kernel computes torch's
two-sided lerp, so auto's result equals torch's loop (bit for bit in the release build, where
both contract it to an FMA; within an ulp in the sanitizer builds, which do not)."""

import pytest
import torch

import gankern as gk
from gankern import _native
from gankern.ops.ema import PlannedEmaUpdate, ema_update_

pytestmark = pytest.mark.skipif(not _native.available("cpu"), reason="native CPU extension not built")
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
    """Records which path ran: 'kernel' (gankern._C.ema_update_cpu) or 'foreach' (torch's loop).
    Installed before any plan is made: a plan binds the launcher when it is built."""
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    ran = []
    launch, foreach = _native._C.ema_update_cpu, torch._foreach_lerp_
    monkeypatch.setattr(_native._C, "ema_update_cpu", lambda *a: ran.append("kernel") or launch(*a))
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: ran.append("foreach") or foreach(*a))
    return ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_runs_the_kernel_with_torchs_bits(dtype, paths):
    shadow, params = _lists(dtype, dtype)
    by_torch = [s.clone() for s in shadow]
    ema_update_(shadow, params, 0.001)
    assert paths == ["kernel"]
    torch._foreach_lerp_(by_torch, params, 0.001)
    _assert_same(shadow, by_torch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_params_run_the_kernel(dtype, paths):
    shadow, params = _lists(dtype)
    want = [s.clone() for s in shadow]
    ema_update_(shadow, params, 0.01)
    assert paths == ["kernel"]
    torch._foreach_lerp_(want, [p.float() for p in params], 0.01)
    _assert_same(shadow, want)


def test_planned_update_and_module_run_the_kernel(paths):
    shadow, params = _lists(torch.float32)
    by_torch = [s.clone() for s in shadow]
    PlannedEmaUpdate(shadow, params)(0.002)
    assert paths == ["kernel"]
    torch._foreach_lerp_(by_torch, params, 0.002)
    _assert_same(shadow, by_torch)
    model = torch.nn.Linear(5, 3)
    ema = gk.EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    assert paths[-1] == "kernel"
    torch.testing.assert_close(ema.module.weight, model.weight - 0.9, rtol=0, atol=1e-6)


def test_a_tensor_weight_runs_the_kernel(paths):
    shadow, params = _lists(torch.float32)
    by_torch = [s.clone() for s in shadow]
    ema_update_(shadow, params, torch.tensor(0.25))
    assert paths == ["kernel"]
    torch._foreach_lerp_(by_torch, params, 0.25)
    _assert_same(shadow, by_torch)


def test_planned_update_follows_params_that_change_dtype(paths):
    """Params whose .data becomes fp16 after the plan was made: the plan regroups (a float32
    shadow of fp16 params) on the next call instead of reading fp16 bits as float32."""
    params = [torch.nn.Parameter(torch.ones(3), requires_grad=False) for _ in range(3)]
    shadow = [torch.zeros(3) for _ in range(3)]
    update = PlannedEmaUpdate(shadow, params)
    update(0.5)
    params[1].data = params[1].data.half()
    update(0.5)
    assert paths == ["kernel", "kernel", "kernel"]  # the second call: one launch per dtype pair
    assert all(torch.equal(s, torch.full((3,), 0.75)) for s in shadow)


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_module_update_in_grad_mode_records_nothing(impl):
    """gk.EMA.update no longer switches grad mode off around the whole update (its cost, cold,
    is a tenth of a small G's update): whatever backend runs, the average must stay a plain
    tensor that autograd does not track, and the model's gradients must be untouched."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    model(torch.randn(8, 4)).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    ema = gk.EMA(model, decay=0.5, impl=impl)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.is_grad_enabled()
    ema.update()
    for name, s in ema.module.named_parameters():
        assert not s.requires_grad and s.grad_fn is None, name
    for name, b in ema.module.named_buffers():
        assert b.grad_fn is None, name
    torch.testing.assert_close(ema.module[0].weight, model[0].weight - 0.5)
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean, rtol=0, atol=0)
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


def test_plan_backend_set_after_construction_is_the_one_that_runs(monkeypatch):
    """PlannedEmaUpdate names the plan's backend after building it; a plan named "cuda_sim" must
    run the CUDA launcher on the host, never the CPU kernel bound for the fast path."""
    if not _native.available("cuda_sim"):
        pytest.skip("CUDA host harness not built (python scripts/build_cuda_sim.py)")
    ran = []
    launch = _native._C.ema_update_cpu
    monkeypatch.setattr(_native._C, "ema_update_cpu", lambda *a: ran.append("cpu") or launch(*a))
    shadow, params = _lists(torch.float32)
    want = [s.clone() for s in shadow]
    PlannedEmaUpdate(shadow, params, impl="cuda_sim")(0.125)
    assert ran == []
    torch._foreach_lerp_(want, params, 0.125)
    _assert_same(shadow, want)
