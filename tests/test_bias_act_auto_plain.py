"""bias_act(impl="auto") on a CPU runs plain PyTorch below PLAIN_CPU_MAX_NUMEL (issue 16: the
fused path's fixed cost loses on small activations; crossover measured by scripts/crossover.py):
same results as the kernel, first and second order, and only where the arithmetic is the same."""

import importlib

import pytest
import torch

from gankern import _native

ba = importlib.import_module("gankern.ops.bias_act")  # the module (gankern.ops.bias_act is the function)


def _inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, float("nan")], dtype=dtype)  # the side at 0 and NaN
    return x, torch.randn(shape[1], generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def _fwd_bwd_double(impl, x0, b0, dy, act, gain):
    x, b = x0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    y = ba.bias_act(x, b, act, None, gain, impl=impl)
    dx, db = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    second = (dx.nan_to_num() ** 2).sum() + db.nan_to_num().sum()
    # linear: dx = gain * dy does not depend on x (plain torch keeps no graph for it at all)
    gx = torch.autograd.grad(second, x, allow_unused=True)[0] if second.requires_grad else None
    return [y.detach(), dx.detach(), db.detach(), torch.zeros_like(x0) if gx is None else gx]


@pytest.mark.parametrize("act", ["lrelu", "linear"])
@pytest.mark.parametrize("shape", [(16, 512), (4, 32, 8, 8)])
def test_plain_path_equals_the_kernel(act, shape):
    x, b, dy = _inputs(shape)
    assert x.numel() <= ba.PLAIN_CPU_MAX_NUMEL
    for got, want in zip(_fwd_bwd_double("auto", x, b, dy, act, 1.4), _fwd_bwd_double("cpu", x, b, dy, act, 1.4)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_channels_last_kept_on_the_plain_path():
    x, b, _ = _inputs((2, 8, 4, 4))
    y = ba.bias_act(x.contiguous(memory_format=torch.channels_last), b)
    assert y.is_contiguous(memory_format=torch.channels_last)


def _kernel_calls(monkeypatch):
    calls = []
    real = _native.bias_act
    monkeypatch.setattr(_native, "bias_act", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    return calls


@pytest.mark.parametrize("case,kernel", [
    ("small", False), ("large", True), ("fp16", True), ("tanh", True), ("relu", True), ("clamp", True),
    ("explicit", True), ("env", True)])
def test_which_path_runs(monkeypatch, case, kernel):
    shape = (2, 8, 4, 4) if case != "large" else (1, 1, ba.PLAIN_CPU_MAX_NUMEL + 1)
    x, b, _ = _inputs(shape, torch.float16 if case == "fp16" else torch.float32)
    if case == "env":
        monkeypatch.setenv("GANKERN_IMPL", "cpu")
    calls = _kernel_calls(monkeypatch)
    ba.bias_act(x, b, case if case in ("tanh", "relu") else "lrelu", clamp=2.0 if case == "clamp" else None,
                impl="cpu" if case == "explicit" else "auto")
    assert bool(calls) == kernel
