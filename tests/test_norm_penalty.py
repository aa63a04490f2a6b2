"""gk.ops.norm_penalty on every backend: values, analytic backward, higher orders, opcheck,
zero rows, layouts and bad input, all against the float64 plain-PyTorch definition."""

import pytest
import torch
from conftest import DEVICE, backends_for

from gankern import testing
from gankern.ops import norm_penalty
from gankern.ops.norm_penalty import IMPLEMENTED, _norm_penalty_backward_op, _norm_penalty_op, norm_penalty_resolved

BACKENDS = backends_for(IMPLEMENTED)
SHAPES = [(1, 1), (7, 127), (3, 4097), (5, 3, 7, 9)]


def plain(g64, center, weight):
    """The definition, written independently of the package: autograd of norm/pow/mean."""
    n = g64.reshape(g64.shape[0], -1).norm(dim=1)
    return weight * ((n - center) ** 2).mean(), n


@pytest.fixture
def poisoned_alloc(monkeypatch):
    """Every torch.empty / empty_like inside a kernel launcher returns NaN-filled memory."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*a, **k):
        t = empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def nan_empty_like(*a, **k):
        t = empty_like(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_float64(backend, dtype, shape, poisoned_alloc):
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    g64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3
    center, weight = 0.75, 3.5
    gp_up = torch.tensor(1.7, dtype=torch.float64)
    gn_up = torch.randn(shape[0], generator=gen, dtype=torch.float64)

    g64r = g64.clone().requires_grad_(True)
    p64, n64 = plain(g64r, center, weight)
    (dg64,) = torch.autograd.grad(p64 * gp_up + (n64 * gn_up).sum(), g64r)

    def run(x):
        x = x.to(DEVICE).requires_grad_(True)
        p, n = norm_penalty(x, center, weight, impl=backend)
        (dg,) = torch.autograd.grad(p * gp_up.to(p) + (n * gn_up.to(n)).sum(), x)
        return p, n, dg

    p, n, dg = run(g64.to(dtype))
    same = None
    if dtype in testing.HALF_DTYPES:
        # The reference in the same dtype: what plain PyTorch users get in bf16/fp16.
        gh = g64.to(dtype).requires_grad_(True)
        ph, nh = plain(gh, center, weight)
        (dgh,) = torch.autograd.grad(ph * gp_up.to(dtype) + (nh * gn_up.to(dtype)).sum(), gh)
        same = (ph, nh, dgh)
        assert p.dtype == torch.float32 and n.dtype == torch.float32 and dg.dtype == dtype
    else:
        assert p.dtype == dtype and n.dtype == dtype and dg.dtype == dtype
    for name, out, ref, i in (("penalty", p, p64, 0), ("norms", n, n64, 1), ("grads", dg, dg64, 2)):
        testing.assert_close_to_reference(out, ref, dtype, name=name,
                                          ref_same_dtype=None if same is None else same[i])


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_grads_keep_layout(backend):
    g = torch.randn(4, 5, 3, 6, dtype=torch.float64).to(DEVICE, memory_format=torch.channels_last)
    g.requires_grad_(True)
    p, n = norm_penalty(g, 1.0, 2.0, impl=backend)
    (dg,) = torch.autograd.grad(p, g)
    assert dg.is_contiguous(memory_format=torch.channels_last)
    g2 = g.detach().contiguous().requires_grad_(True)
    p2, _ = plain(g2, 1.0, 2.0)
    (dg2,) = torch.autograd.grad(p2, g2)
    testing.assert_close_to_reference(dg, dg2, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_dense_grads(backend):
    base = torch.randn(6, 10, 4, dtype=torch.float64, device=DEVICE)
    g = base[:, ::2, :].detach().requires_grad_(True)  # a strided view
    p, n = norm_penalty(g, 1.0, 2.0, impl=backend)
    p64, n64 = plain(g.detach(), 1.0, 2.0)
    testing.assert_close_to_reference(n, n64, torch.float64)
    (dg,) = torch.autograd.grad(p, g)
    assert dg.shape == g.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_zero_norm_rows_give_finite_zero_gradient(backend, center):
    g = torch.randn(4, 33, dtype=torch.float64, device=DEVICE)
    g[1] = 0.0
    g.requires_grad_(True)
    p, n = norm_penalty(g, center, 10.0, impl=backend)
    (dg,) = torch.autograd.grad(p + n.sum(), g, create_graph=True)
    assert n[1].item() == 0.0
    assert torch.isfinite(dg).all() and (dg[1] == 0).all()
    g2 = g.detach().clone().requires_grad_(True)
    p2, n2 = plain(g2, center, 10.0)
    (dg2,) = torch.autograd.grad(p2 + n2.sum(), g2)
    testing.assert_close_to_reference(dg, dg2, torch.float64)
    (h,) = torch.autograd.grad(dg.sum(), g)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_gradcheck_and_gradgradcheck(backend, center):
    g = torch.randn(3, 2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def f(x):
        return norm_penalty(x, center, 2.5, impl=backend)

    # Interpreted Triton costs ~10 ms a launch: random projections (fast_mode) instead of one
    # evaluation per element; the native and reference backends are checked in full.
    fast = backend == "triton"
    assert torch.autograd.gradcheck(f, (g,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (g,), fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_op_gradcheck(backend):
    """The backward op is differentiable in all four tensor inputs (third order of the penalty)."""
    b = 3
    g = torch.randn(b, 7, dtype=torch.float64, device=DEVICE)
    norms = g.norm(dim=1)
    args = [torch.tensor(0.8, dtype=torch.float64), torch.randn(b, dtype=torch.float64), g, norms]
    args = [a.to(DEVICE).requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(
        lambda gp, gn, x, n: _norm_penalty_backward_op(gp, gn, x, n, 1.0, 2.0, backend), args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    g = torch.randn(4, 3, 5, dtype=torch.float32, device=DEVICE, requires_grad=True)
    torch.library.opcheck(_norm_penalty_op, (g, 1.0, 10.0, backend))
    n = g.detach().reshape(4, -1).norm(dim=1)
    torch.library.opcheck(_norm_penalty_backward_op,
                          (torch.tensor(1.0, device=DEVICE), torch.randn(4, device=DEVICE), g.detach(), n,
                           1.0, 10.0, backend))


def test_bad_input():
    g = torch.randn(4, 5)
    with pytest.raises(TypeError, match="grads"):
        norm_penalty(torch.ones(4, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="grads"):
        norm_penalty([1.0, 2.0])
    with pytest.raises(ValueError, match="grads"):
        norm_penalty(torch.empty(0, 5))
    with pytest.raises(ValueError, match="center"):
        norm_penalty(g, float("nan"))
    with pytest.raises(TypeError, match="weight"):
        norm_penalty(g, 1.0, "10")
    with pytest.raises(ValueError, match="impl"):
        norm_penalty(g, impl="nope")


def test_native_checks_reject_bad_pointers():
    """_native is the pointer boundary: it re-checks what the op layer already guaranteed."""
    from gankern import _backend, _native

    if not _backend.usable("cpu", torch.device("cpu")):
        pytest.skip("native CPU kernels not built")
    g = torch.randn(4, 6)
    with pytest.raises(ValueError, match="grads"):
        _native.norm_penalty(g.t(), 0.0, 1.0)
    p, n = _native.norm_penalty(g, 0.0, 1.0)
    with pytest.raises(ValueError, match="grad_norms"):
        _native.norm_penalty_backward(p, torch.ones(3), g, n, 0.0, 1.0)
    with pytest.raises(TypeError, match="norms"):
        _native.norm_penalty_backward(p, torch.ones(4), g, n.double(), 0.0, 1.0)


# -- the eager path (outside torch.compile) and the custom ops (under it) -------------------------
def _two_orders(fn, g, gp_up, gn_up, v):
    """penalty, norms, d/dg of <(gp_up, gn_up), (penalty, norms)> and the second order d<v, .>/dg."""
    g = g.detach().requires_grad_(True)
    p, n = fn(g)
    (dg,) = torch.autograd.grad(p * gp_up + (n * gn_up).sum(), g, create_graph=True)
    (d2,) = torch.autograd.grad((dg * v).sum(), g)
    return [t.detach() for t in (p, n, dg, d2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_eager_path_equals_custom_ops(backend, dtype, center):
    """The public call (eager autograd.Function) and the custom ops run the same kernels: values,
    gradient and second order are bit-identical and match the float64 definition."""
    gen = torch.Generator().manual_seed(3)
    g = (torch.randn(5, 3, 7, 9, generator=gen, dtype=dtype) * 0.3).to(DEVICE)
    g[2] = 0.0  # a zero row: 1/n is taken as 0 on both paths
    v = torch.randn(g.shape, generator=gen, dtype=dtype).to(DEVICE)
    gp_up, gn_up = 1.7, torch.randn(5, generator=gen, dtype=dtype).to(DEVICE)
    eager = _two_orders(lambda x: norm_penalty(x, center, 2.5, impl=backend), g, gp_up, gn_up, v)
    ops = _two_orders(lambda x: _norm_penalty_op(x, center, 2.5, backend), g, gp_up, gn_up, v)
    ref = _two_orders(lambda x: plain(x, center, 2.5), g.cpu().double(), gp_up, gn_up.cpu().double(),
                      v.cpu().double())
    for name, e, o, r in zip(["penalty", "norms", "dg", "d2g"], eager, ops, ref):
        assert torch.equal(e, o), f"{name}: eager path differs from the custom ops"
        if name == "d2g":  # the definition's second order is NaN at the zero row
            e, r = e[[0, 1, 3, 4]], r[[0, 1, 3, 4]]
        testing.assert_close_to_reference(e, r, dtype, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_path_skips_custom_ops(backend, monkeypatch):
    """Outside torch.compile a penalty and its plain backward run no custom op; under
    create_graph the differentiable backward op runs (its derivative is defined there)."""
    import sys

    module = sys.modules["gankern.ops.norm_penalty"]
    calls = []

    def boom(*a, **k):
        raise AssertionError("custom op called on the eager path")

    backward_op = module._norm_penalty_backward_op
    monkeypatch.setattr(module, "_norm_penalty_op", boom)
    monkeypatch.setattr(module, "_norm_penalty_backward_op", lambda *a: calls.append(1) or backward_op(*a))
    g = torch.randn(4, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    p, n = norm_penalty(g, 1.0, 10.0, impl=backend)
    (dg,) = torch.autograd.grad(p, g)
    assert calls == []
    g64 = g.detach().clone().requires_grad_(True)
    (dg64,) = torch.autograd.grad(plain(g64, 1.0, 10.0)[0], g64)
    testing.assert_close_to_reference(dg, dg64, torch.float64)
    p, n = norm_penalty(g, 1.0, 10.0, impl=backend)
    (dg2,) = torch.autograd.grad(p, g, create_graph=True)
    assert calls == [1] and dg2.requires_grad
    assert torch.equal(dg2.detach(), dg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unused_output_gradients(backend):
    """Only the penalty or only the norms reach the loss: the other gradient is None on the
    eager path (no zeros materialized by autograd) and counts as 0."""
    g = torch.randn(3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    g64 = g.detach().clone().requires_grad_(True)
    for pick in (0, 1):
        out = norm_penalty(g, 0.5, 3.0, impl=backend)[pick]
        (dg,) = torch.autograd.grad(out.sum(), g)
        (dg64,) = torch.autograd.grad(plain(g64, 0.5, 3.0)[pick].sum(), g64)
        testing.assert_close_to_reference(dg, dg64, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_runs_the_custom_ops(backend):
    """Under torch.compile the graphs hold the custom ops, and the results equal eager ones."""
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()
    graphs = {"fw": [], "bw": []}

    def record(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(str(gm.graph))
            return gm.forward
        return compiler

    def fn(g):
        p, n = norm_penalty(g, 1.0, 10.0, impl=backend)
        return p + n.sum()

    compiled = torch.compile(fn, fullgraph=True, backend=aot_autograd(fw_compiler=record("fw"),
                                                                      bw_compiler=record("bw")))
    g = torch.randn(4, 3, 5, device=DEVICE, requires_grad=True)
    y = compiled(g)
    (dg,) = torch.autograd.grad(y, g)
    y0 = fn(g)
    (dg0,) = torch.autograd.grad(y0, g)
    assert "gankern.norm_penalty.default" in graphs["fw"][0]
    assert "gankern.norm_penalty_backward.default" in graphs["bw"][0]
    torch.testing.assert_close(y, y0)
    torch.testing.assert_close(dg, dg0)


@pytest.mark.skipif("cpu" not in backends_for(IMPLEMENTED, torch.device("cpu")), reason="native CPU kernels not built")
@pytest.mark.parametrize("isa", ["auto", "baseline"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_threaded_rows_both_isas(dtype, isa, monkeypatch):
    """Rows above torch's grain (threaded), with the AVX2 loops (auto, on a CPU that has them)
    and with the baseline loops every other x86 CPU runs, against the float64 definition."""
    if isa == "baseline":
        monkeypatch.setenv("GANKERN_CPU_NO_AVX2", "1")
    gen = torch.Generator().manual_seed(5)
    g64 = (torch.randn(9, 3, 41, 43, generator=gen, dtype=torch.float64) * 0.2).to(dtype).double()
    g64[4] = 0.0
    gn_up = torch.randn(9, generator=gen, dtype=torch.float64)
    g64r = g64.clone().requires_grad_(True)
    p64, n64 = plain(g64r, 1.0, 10.0)
    (dg64,) = torch.autograd.grad(p64 * 1.3 + (n64 * gn_up).sum(), g64r)
    g = g64.to(dtype).requires_grad_(True)
    p, n = norm_penalty(g, 1.0, 10.0, impl="cpu")
    (dg,) = torch.autograd.grad(p * 1.3 + (n * gn_up.float()).sum(), g)
    assert dg.dtype == dtype and (dg[4] == 0).all()
    testing.assert_close_to_reference(p, p64, torch.float32, name="penalty")
    testing.assert_close_to_reference(n, n64, torch.float32, name="norms")
    testing.assert_close_to_reference(dg, dg64, dtype, name="dg", tol=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_grad_to_gets_exact_zeros_and_changes_nothing_else(backend):
    """gradient_penalty hands the penalty's node the parameters it pruned: their gradient is an
    exact zero of their own shape and dtype, the grads' gradient is the plain op's bit for bit,
    and a create_graph backward (gradgrad) still sees the same penalty."""
    torch.manual_seed(6)
    g = torch.randn(3, 2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    leaves = [torch.randn(4, dtype=torch.float32, device=DEVICE, requires_grad=True),
              torch.randn(2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)]
    p, n = norm_penalty_resolved(g, 1.0, 2.5, backend, zero_grad_to=leaves)
    (want,) = torch.autograd.grad(norm_penalty(g, 1.0, 2.5, impl=backend)[0], g)
    p.backward()
    assert torch.equal(g.grad, want)
    for t in leaves:
        assert t.grad is not None and t.grad.dtype == t.dtype and t.grad.shape == t.shape
        assert not t.grad.any()
    # Through the norms alone the node runs too, and so gives the zeros.
    leaf = torch.randn(4, device=DEVICE, requires_grad=True)
    _, n = norm_penalty_resolved(g, 1.0, 2.5, backend, zero_grad_to=[leaf])
    n.sum().backward()
    assert leaf.grad is not None and not leaf.grad.any()
    # create_graph (a gradient of the penalty's gradient): the same second derivative as the plain op.
    p, _ = norm_penalty_resolved(g, 1.0, 2.5, backend, zero_grad_to=leaves)
    (dg,) = torch.autograd.grad(p, g, create_graph=True)
    (dg_plain,) = torch.autograd.grad(norm_penalty(g, 1.0, 2.5, impl=backend)[0], g, create_graph=True)
    assert torch.equal(torch.autograd.grad(dg.square().sum(), g)[0],
                       torch.autograd.grad(dg_plain.square().sum(), g)[0])
