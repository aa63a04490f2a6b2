"""Every Triton launch runs under its tensors' device, and no op's hot path copies from the host
or waits for the device on every call.

Why: Triton launches on the *current* CUDA device (tensors on cuda:1 with cuda:0 current are
an illegal address), and a torch.tensor(..., device=cuda) per call is a pageable host-to-device
copy that also breaks CUDA-graph capture. Without a GPU both are checked structurally: the
launchers carry the guard, the guard switches to a (fake) cuda:1 tensor's device, and a
dispatch mode counts the aten ops that would be a host copy or a host sync on a GPU.
"""

import contextlib
import importlib
import inspect
import pkgutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gankern as gk
import gankern.ops as ops_pkg
from conftest import DEVICE, backends_for
from gankern.ops import _device_guard
from gankern.ops import spectral_norm as sn
from gankern.ops.ema import ema_update_
from gankern.ops.norm_penalty import norm_penalty


def _launcher_modules():
    for info in pkgutil.walk_packages(ops_pkg.__path__, "gankern.ops."):
        mod = importlib.import_module(info.name)
        if any(name.endswith("_kernel") and hasattr(obj, "fn") for name, obj in vars(mod).items()):
            yield mod


def test_every_triton_launcher_is_guarded():
    mods = list(_launcher_modules())
    assert len(mods) >= 4
    for mod in mods:
        public = [name for name, obj in vars(mod).items()
                  if inspect.isfunction(obj) and obj.__module__ == mod.__name__ and not name.startswith("_")]
        assert public, mod.__name__
        for name in public:
            assert getattr(getattr(mod, name), "on_tensor_device", False), f"{mod.__name__}.{name} launches unguarded"


def test_guard_makes_the_tensors_device_current(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    entered = []

    @contextlib.contextmanager
    def fake_device(d):
        entered.append(torch.device(d).index)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    seen = []
    launcher = _device_guard.on_tensor_device(lambda mode, xs, y=None: seen.append(list(entered)))
    with FakeTensorMode():
        on1, on0 = torch.empty(3, device="cuda:1"), torch.empty(3, device="cuda:0")
    launcher(2, [on1], y=None)  # first tensor found inside a list after a non-tensor argument
    assert entered == [1] and seen == [[1]]
    launcher(2, [on0])  # already current: no switch
    assert entered == [1] and seen[-1] == [1]
    launcher(2, [torch.empty(3)])  # CPU tensors (the interpreter): no CUDA call at all
    assert entered == [1]


def test_device_consts_are_made_once_per_value():
    a = _device_guard.device_consts((0.2, 1.5, 0.0), torch.float64, torch.device("cpu"))
    b = _device_guard.device_consts((0.2, 1.5, 0.0), torch.float64, torch.device("cpu"))
    c = _device_guard.device_consts((0.3, 1.5, 0.0), torch.float64, torch.device("cpu"))
    assert a is b and c is not a
    assert a.tolist() == [0.2, 1.5, 0.0] and c.dtype == torch.float64


# aten ops that on a GPU are a copy from host memory or make the host wait for the device.
HOST_COPY_OR_SYNC = {"lift_fresh", "lift_fresh_copy", "_to_copy", "_local_scalar_dense", "item", "is_nonzero",
                     "nonzero", "equal", "_copy_from", "_copy_from_and_resize"}


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.hits = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_COPY_OR_SYNC:
            self.hits.append(str(func))
        return func(*args, **(kwargs or {}))


def _calls(backend, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 4, 4, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    b = torch.randn(8, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    shadow = [torch.randn(100, generator=g, dtype=dtype).to(DEVICE) for _ in range(3)]
    params = [torch.randn(100, generator=g, dtype=dtype).to(DEVICE) for _ in range(3)]
    grads = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    w = torch.randn(16, 8, 3, 3, generator=g, dtype=dtype).to(DEVICE)
    u = torch.nn.functional.normalize(torch.randn(16, generator=g, dtype=dtype), dim=0).to(DEVICE)
    v = torch.nn.functional.normalize(torch.randn(72, generator=g, dtype=dtype), dim=0).to(DEVICE)
    # A post-hoc EMA's weights change every step: they must not become a device tensor per call.
    shadows = [[torch.randn(5000, generator=g, dtype=dtype).to(DEVICE)] for _ in range(3)]
    multi_params = [torch.randn(5000, generator=g, dtype=dtype).to(DEVICE)]
    multi_weights = iter(range(1, 10**6))

    def run():
        y = gk.ops.bias_act(x, b, act="tanh", clamp=2.0, impl=backend)
        y.backward(torch.ones_like(y))
        ema_update_(shadow, params, 0.01, impl=backend)
        step = next(multi_weights)
        gk.ops.ema_update_multi_(shadows, multi_params, [1 / (step + 1), 0.5 / step, 0.0], impl=backend)
        pen, _ = norm_penalty(grads, 1.0, 10.0, impl=backend)
        pen.backward()
        s, u2, v2 = sn.power_iteration_(w, u, v, 0, 1, 1e-12, backend)
        wr = w.clone().requires_grad_()
        sn.normalize(wr, u2, v2, s, 0, backend).backward(torch.ones_like(w))

    return run


@pytest.mark.parametrize("backend", backends_for(["triton", "cpu", "cuda"]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_no_host_copy_or_sync_per_call(backend, dtype):
    run = _calls(backend, dtype)
    run()  # the first call may build cached tables and constants
    with _Count() as count:
        run()
    assert count.hits == [], f"{backend}: host copies/syncs on every call: {count.hits}"
