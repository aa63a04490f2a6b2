"""impl="auto" on a CPU picks the path that measured faster (issue 16): gk.ops.bias_act runs torch
ops below CPU_FUSED_MIN_NUMEL elements and the kernels from there on, and layers fused by
gk.nn.fuse_bias_act run as the unfused model (bit for bit); an explicit impl always runs the
kernels. Either way the result is the float64 definition's."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gankern as gk
from gankern import _native, testing
from gankern.ops.bias_act import CPU_FUSED_MIN_NUMEL, bias_act

pytestmark = pytest.mark.skipif(not _native.available("cpu"), reason="native CPU extension not built")


def _graph_names(t: torch.Tensor) -> set:
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return {type(n).__name__ for n in seen}


def _fused_node(names: set) -> bool:
    return any("BiasAct" in n for n in names)


@pytest.mark.parametrize("numel,fused", [(CPU_FUSED_MIN_NUMEL // 2, False), (CPU_FUSED_MIN_NUMEL - 16, False),
                                         (CPU_FUSED_MIN_NUMEL, True), (4 * CPU_FUSED_MIN_NUMEL, True)])
def test_auto_crossover_by_size(numel, fused, monkeypatch):
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    x = torch.randn(numel // 16, 16, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    y = bias_act(x, b, "lrelu", 0.2, dim=1)
    assert _fused_node(_graph_names(y)) == fused
    x64, b64 = x.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    y64 = F.leaky_relu(x64 + b64, 0.2)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, b), dy)
    want = torch.autograd.grad(y64, (x64, b64), dy.double())
    testing.assert_close_to_reference(y.detach(), y64.detach(), torch.float32, name="y")
    for g, w, name in zip(got, want, ("dx", "db")):
        testing.assert_close_to_reference(g, w, torch.float32, name=name)


def test_an_explicit_impl_runs_the_kernels_at_any_size():
    x = torch.randn(4, 8, requires_grad=True)
    assert _fused_node(_graph_names(bias_act(x, torch.randn(8), "lrelu", impl="cpu")))


@pytest.mark.parametrize("act,gain,clamp", [("tanh", 1.0, None), ("lrelu", 1.4, 0.5), ("elu", 2.0, 3.0)])
def test_small_plain_path_computes_half_precision_in_float32(act, gain, clamp):
    """fp16 x, float32 b: the plain path computes in float32 and rounds once, as the kernels do."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, generator=g).half()
    b = torch.randn(16, generator=g)
    small = bias_act(x, b, act, None, gain, clamp, dim=1)
    kernel = bias_act(x, b, act, None, gain, clamp, dim=1, impl="cpu")
    assert small.dtype == torch.float16
    assert (small.float() - kernel.float()).abs().max().item() <= 2 ** -10 * kernel.float().abs().max().item()


def _critic():
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 2, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ELU(0.7), nn.Linear(32, 1))


def test_fused_layers_run_unfused_on_cpu_under_auto(monkeypatch):
    """Same bits as the model before fuse_bias_act, forward and every parameter gradient of a
    penalty step, and no fused node in the graph; the state_dict keys are unchanged."""
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    torch.manual_seed(0)
    plain = _critic()
    fused = gk.nn.fuse_bias_act(copy.deepcopy(plain))
    x = torch.randn(4, 3, 16, 16)
    assert not _fused_node(_graph_names(fused(x)))
    for D in (plain, fused):
        D.zero_grad(set_to_none=True)
        (D(x).mean() + gk.gradient_penalty(D, x, kind="r1")).backward()
    assert torch.equal(plain(x), fused(x))
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert list(plain.state_dict()) == list(fused.state_dict())


def test_an_explicit_impl_keeps_the_fused_kernels():
    torch.manual_seed(0)
    plain = _critic().double()
    fused = gk.nn.fuse_bias_act(copy.deepcopy(plain), impl="cpu")
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = fused(x)
    assert _fused_node(_graph_names(y))
    torch.testing.assert_close(y, plain(x), rtol=1e-12, atol=1e-12)
