"""gk.ops.bias_act on every backend: forward, gradient and second-order gradient against the
float64 torch.nn.functional definition, every activation, odd shapes, bias along any dim,
channels_last kept, 16-bit within 2x of plain PyTorch in that dtype; gradcheck/gradgradcheck,
opcheck and bad input."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, backends_for

import gankern as gk
from gankern import testing
from gankern.ops import bias_act
import sys
from gankern.ops.bias_act import (IMPLEMENTED, _bias_act_grad2_op, _bias_act_grad_op, _bias_act_op)
from gankern.ops.bias_act.reference import ACTS, DEFAULT_ALPHA, PIECEWISE_LINEAR

BACKENDS = backends_for(IMPLEMENTED)
bias_act_module = sys.modules["gankern.ops.bias_act"]  # gk.ops.bias_act is the function
# (shape, dim, channels_last)
LAYOUTS = [((7,), 0, False), ((3, 127), -1, False), ((2, 5, 7, 9), 1, False), ((2, 5, 3, 7), 1, True)]


def plain(x, b, act, alpha, gain, clamp, dim):
    """What users write: x + b, then the torch activation, gain and clamp, in x's dtype."""
    shape = [-1 if i == dim % x.dim() else 1 for i in range(x.dim())]
    z = x + b.reshape(shape)
    fn = {"linear": lambda t: t, "relu": F.relu, "lrelu": lambda t: F.leaky_relu(t, alpha),
          "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu, "softplus": F.softplus,
          "elu": lambda t: F.elu(t, alpha), "selu": F.selu}[act]
    y = fn(z) * gain
    return y if clamp is None else y.clamp(-clamp, clamp)


@pytest.fixture
def poisoned_alloc(monkeypatch):
    """Every torch.empty / empty_like inside a launcher returns NaN-filled memory."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))


def _three_orders(x, b, dy, v, fn):
    """y, dx = d<dy, y>/dx, db, and the second order d<v, dx>/dx, d<v, dx>/d dy."""
    x = x.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    dy = dy.detach().requires_grad_(True)
    y = fn(x, b)
    dx, db = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    outs = [y, dx, db]
    if dx.requires_grad:
        ddx, ddy = torch.autograd.grad(dx, (x, dy), v, allow_unused=True)
        outs += [torch.zeros_like(x) if ddx is None else ddx, ddy]
    return [o.detach() for o in outs]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: f"{l[0]}-dim{l[1]}{'-cl' if l[2] else ''}")
def test_three_orders_match_float64(layout, act, dtype, backend, poisoned_alloc):
    shape, dim, cl = layout
    gen = torch.Generator().manual_seed(sum(shape) + ACTS[act])
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    b64 = torch.randn(shape[dim], generator=gen, dtype=torch.float64)
    dy64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    v64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    # The float64 reference sees the same (rounded) inputs as the kernel: only compute differs.
    x64, b64, dy64, v64 = (t.to(dtype).double() for t in (x64, b64, dy64, v64))
    alpha = DEFAULT_ALPHA.get(act, 0.0)
    gain, clamp = (1.4, 1.5) if len(shape) == 4 else (1.0, None)
    ref = _three_orders(x64, b64, dy64, v64, lambda x, b: plain(x, b, act, alpha, gain, clamp, dim))

    def dev(t):
        t = t.to(DEVICE, dtype)
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    fn = lambda x, b: bias_act(x, b, act, gain=gain, clamp=clamp, dim=dim, impl=backend)  # noqa: E731
    out = _three_orders(dev(x64), b64.to(DEVICE, dtype), dev(dy64), dev(v64), fn)
    same = None
    if dtype in testing.HALF_DTYPES:
        same = _three_orders(x64.to(dtype), b64.to(dtype), dy64.to(dtype), v64.to(dtype),
                             lambda x, b: plain(x, b, act, alpha, gain, clamp, dim))
    if cl:
        assert out[0].is_contiguous(memory_format=torch.channels_last)
        assert out[1].is_contiguous(memory_format=torch.channels_last)
    assert out[0].dtype == dtype and out[2].dtype == dtype
    names = ["y", "dx", "db", "d2x", "d2dy"]
    assert len(out) == len(ref)
    for i, (o, r) in enumerate(zip(out, ref)):
        if act in PIECEWISE_LINEAR and names[i] == "d2x":
            assert not o.any() and not r.any()  # act'' = 0: the second-order x term is exactly 0
            continue
        testing.assert_close_to_reference(o, r, dtype, name=names[i],
                                          ref_same_dtype=None if same is None else same[i])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", list(ACTS))
def test_gradcheck_and_gradgradcheck(act, backend):
    x = (torch.randn(2, 3, 2, dtype=torch.float64, device=DEVICE) * 2).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    # The Triton interpreter costs ~10 ms a launch: its checks use random projections
    # (fast_mode) instead of one evaluation per input element; the other backends check fully.
    fast = backend == "triton"
    for kw in (dict(gain=1.7, clamp=1.2), dict()):
        fn = lambda x, b: bias_act(x, b, act, dim=1, impl=backend, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, b), fast_mode=fast)
        assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(lambda x: bias_act(x, None, act, impl=backend), (x,), fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_piecewise_linear_second_order_costs_nothing(backend, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("bias_act_grad2 must not run for a piecewise-linear act")

    dispatch = bias_act_module._dispatch

    def dispatch_without_grad2(mode, *a):
        if mode == 2:
            boom()
        return dispatch(mode, *a)

    # Both routes to the second-order kernel: the custom op (create_graph, torch.compile) and
    # the eager path's direct call.
    monkeypatch.setattr(bias_act_module, "_bias_act_grad2_op", boom)
    monkeypatch.setattr(bias_act_module, "_dispatch", dispatch_without_grad2)
    x = torch.randn(3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    for act in PIECEWISE_LINEAR:
        (dx,) = torch.autograd.grad(bias_act(x, b, act, dim=1, impl=backend).pow(2).sum(), x, create_graph=True)
        dx.sum().backward()
    with pytest.raises(AssertionError, match="must not run"):
        (dx,) = torch.autograd.grad(bias_act(x, b, "tanh", dim=1, impl=backend).sum(), x, create_graph=True)
        dx.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = torch.randn(2, 3, 5, device=DEVICE, requires_grad=True)
    b = torch.randn(3, device=DEVICE, requires_grad=True)
    dy, v = torch.randn(2, 3, 5, device=DEVICE), torch.randn(2, 3, 5, device=DEVICE)
    dy.requires_grad_(True)
    for act in ("silu", "selu"):  # selu: the op keeps its name, the kernels get the elu form
        args = (act, 0.0, 1.3, 2.0, 1)
        torch.library.opcheck(_bias_act_op, (x, b, *args, backend))
        torch.library.opcheck(_bias_act_grad_op, (dy, x, b, *args, backend))
        torch.library.opcheck(_bias_act_grad2_op, (v, dy.detach(), x.detach(), b.detach(), *args, backend))


def test_bad_input():
    x, b = torch.randn(2, 3, 4), torch.randn(3)
    cases = [
        (dict(x=torch.ones(2, 3, dtype=torch.int32)), TypeError, "x must"),
        (dict(b=torch.randn(4)), ValueError, "b must have x.shape"),
        (dict(b=torch.randn(3, 1)), ValueError, "b must have 1 dims"),
        (dict(b=torch.ones(3, dtype=torch.int64)), TypeError, "b must"),
        # A float64 bias on float32 x would be rounded silently (torch's x + b promotes instead).
        (dict(b=torch.randn(3, dtype=torch.float64)), TypeError, "b must have a dtype .*float64"),
        (dict(x=x.half(), b=torch.randn(3, dtype=torch.float64)), TypeError, "b must have a dtype"),
        (dict(act="gelu"), ValueError, "act must be one of"),
        (dict(act=1), TypeError, "act must be a str"),
        (dict(dim=3), ValueError, "dim must be in"),
        (dict(dim=1.0), TypeError, "dim must be an int"),
        (dict(clamp=-1.0), ValueError, "clamp"),
        (dict(gain=float("nan")), ValueError, "gain"),
        (dict(alpha="0.2"), TypeError, "alpha"),
        (dict(impl="nope"), ValueError, "impl"),
    ]
    for bad, exc, match in cases:
        args = dict(x=x, b=b, act="lrelu", dim=1)
        args.update(bad)
        with pytest.raises(exc, match=match):
            bias_act(args.pop("x"), args.pop("b"), **args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_swish_is_silu_and_bias_dtypes_held_exactly(backend):
    x = torch.randn(2, 3, 5, device=DEVICE)
    b = torch.randn(3, device=DEVICE)
    assert torch.equal(bias_act(x, b, "swish", impl=backend), bias_act(x, b, "silu", impl=backend))
    assert gk.nn.BiasAct(3, act="swish").act == "swish"
    # Lower-precision biases are exact in the float32 computation: accepted, same as upcast first.
    for low in (torch.float16, torch.bfloat16):
        bl = b.to(low)
        torch.testing.assert_close(bias_act(x, bl, impl=backend), bias_act(x, bl.float(), impl=backend),
                                   rtol=0, atol=0)
    # A float32 bias on 16-bit x is the mixed-precision case: computed in float32, rounded once.
    xh = x.to(torch.bfloat16)
    y = bias_act(xh, b, "selu", gain=1.5, impl=backend)
    expected = (F.selu(xh.float() + b[:, None]) * 1.5).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_public_names():
    assert gk.ops.bias_act is bias_act
    assert gk.nn.BiasAct is not None and gk.nn.fuse_bias_act is not None


# -- the eager path (outside torch.compile) and the custom ops (under it) -------------------------
def _via_custom_ops(act, alpha, gain, clamp, dim, backend):
    """bias_act through the torch.library custom ops, as torch.compile runs it."""
    def fn(x, b):
        return _bias_act_op(x, b.to(torch.float64 if x.dtype == torch.float64 else torch.float32),
                            act, alpha, gain, clamp, dim % x.dim(), backend)
    return fn


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "softplus", "elu"])
def test_eager_path_equals_custom_ops(act, dtype, backend):
    """The public call (eager autograd.Function) and the custom ops run the same kernels: every
    order, double backward included, is bit-identical, and both match the float64 definition."""
    layouts = LAYOUTS if backend != "triton" else LAYOUTS[2:]  # the interpreter is slow
    for shape, dim, cl in layouts:
        gen = torch.Generator().manual_seed(7 + len(shape))
        x, dy, v = (torch.randn(shape, generator=gen, dtype=dtype) * 2 for _ in range(3))
        b = torch.randn(shape[dim], generator=gen, dtype=dtype)
        if cl:
            x, dy, v = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy, v))
        x, dy, v, b = (t.to(DEVICE) for t in (x, dy, v, b))
        alpha, gain, clamp = DEFAULT_ALPHA.get(act, 0.0), 1.3, (1.1 if len(shape) == 4 else None)
        eager = _three_orders(x, b, dy, v, lambda x, b: bias_act(x, b, act, gain=gain, clamp=clamp, dim=dim,
                                                                impl=backend))
        ops = _three_orders(x, b, dy, v, _via_custom_ops(act, alpha, gain, clamp, dim, backend))
        ref = _three_orders(x.cpu().double(), b.cpu().double(), dy.cpu().double(), v.cpu().double(),
                            lambda x, b: plain(x, b, act, alpha, gain, clamp, dim))
        assert len(eager) == len(ops) == len(ref) == 5
        for name, e, o, r in zip(["y", "dx", "db", "d2x", "d2dy"], eager, ops, ref):
            assert torch.equal(e, o), f"{name}: eager path differs from the custom ops"
            if act in PIECEWISE_LINEAR and name == "d2x":
                continue
            testing.assert_close_to_reference(e, r, dtype, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_path_skips_custom_ops(backend, monkeypatch):
    """Outside torch.compile no custom op runs for y, the create_graph backward and the second
    backward; the kernels are called directly (and still give the float64 result)."""
    def boom(*a, **k):
        raise AssertionError("custom op called on the eager path")

    for name in ("_bias_act_op", "_bias_act_grad_op", "_bias_act_grad2_op"):
        monkeypatch.setattr(bias_act_module, name, boom)
    modes = []
    dispatch = bias_act_module._dispatch
    monkeypatch.setattr(bias_act_module, "_dispatch", lambda mode, *a: modes.append(mode) or dispatch(mode, *a))
    grad_db = bias_act_module._dispatch_grad_db
    monkeypatch.setattr(bias_act_module, "_dispatch_grad_db", lambda *a: modes.append("1+db") or grad_db(*a))
    x = torch.randn(3, 4, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = bias_act(x, b, "tanh", impl=backend)
    (dx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    dx.pow(2).sum().backward()
    # y; dx; then the second backward: d(dx)/d(dy), d(dx)/dx, and dy = 2y sends d(dy) back
    # through y's own gradient, which on the CPU backend also sums db in the same pass.
    assert modes == [0, 1, 1, 2, "1+db" if backend == "cpu" else 1]
    x64, b64 = x.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    (dx64,) = torch.autograd.grad(plain(x64, b64, "tanh", 0.0, 1.0, None, 1).pow(2).sum(), x64, create_graph=True)
    dx64.pow(2).sum().backward()
    testing.assert_close_to_reference(dx.detach(), dx64.detach(), torch.float64, name="dx")
    testing.assert_close_to_reference(x.grad, x64.grad, torch.float64, name="x.grad")
    testing.assert_close_to_reference(b.grad, b64.grad, torch.float64, name="b.grad")


class _NoGrad(torch.autograd.Function):
    """Identity whose backward sends no gradient (None) to its input, as a conv's double
    backward does to the conv's input."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return None


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_gradient_runs_no_kernel(backend, monkeypatch):
    """A None gradient reaching bias_act (and its gradient op) is passed on as None, never
    materialized as zeros and pushed through the kernels and everything before them."""
    modes = []
    dispatch = bias_act_module._dispatch
    monkeypatch.setattr(bias_act_module, "_dispatch", lambda mode, *a: modes.append(mode) or dispatch(mode, *a))
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = torch.randn(2, 3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    x2 = x * 1.5
    y = bias_act(x2, b, "silu", impl=backend)
    (x2 + _NoGrad.apply(y)).sum().backward()
    assert modes == [0]  # the forward only
    assert b.grad is not None and not b.grad.any()  # a zero gradient, as autograd's zeros gave
    torch.testing.assert_close(x.grad, torch.full_like(x, 1.5))
    x2 = x * 1.5
    (dx,) = torch.autograd.grad((bias_act(x2, b, "silu", impl=backend) * w).sum(), x2, create_graph=True)
    modes.clear()
    (w.sum() + _NoGrad.apply(dx).sum()).backward()
    assert modes == []


def _capture_backend(graphs):
    """A torch.compile backend that records the forward and backward graphs aot_autograd makes."""
    from torch._dynamo.backends.common import aot_autograd

    def record(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(str(gm.graph))
            return gm.forward
        return compiler

    return aot_autograd(fw_compiler=record("fw"), bw_compiler=record("bw"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_runs_the_custom_ops(backend):
    """Under torch.compile the graphs hold the custom ops (not the eager Functions), and the
    compiled function and its gradient equal the eager ones."""
    torch._dynamo.reset()
    graphs = {"fw": [], "bw": []}

    def fn(x, b):
        return bias_act(x, b, "softplus", gain=1.2, dim=1, impl=backend) * 2

    compiled = torch.compile(fn, fullgraph=True, backend=_capture_backend(graphs))
    x = torch.randn(2, 3, 4, device=DEVICE, requires_grad=True)
    b = torch.randn(3, device=DEVICE, requires_grad=True)
    y = compiled(x, b)
    dx, db = torch.autograd.grad(y.sum(), (x, b))
    y0 = fn(x, b)
    dx0, db0 = torch.autograd.grad(y0.sum(), (x, b))
    assert "gankern.bias_act.default" in graphs["fw"][0]
    assert "gankern.bias_act_grad.default" in graphs["bw"][0]
    torch.testing.assert_close(y, y0)
    torch.testing.assert_close(dx, dx0)
    torch.testing.assert_close(db, db0)


NATIVE_CPU = "cpu" in backends_for(IMPLEMENTED, torch.device("cpu"))


@pytest.mark.skipif(not NATIVE_CPU, reason="native CPU kernels not built")
@pytest.mark.parametrize("isa", ["auto", "baseline"])
@pytest.mark.parametrize("layout", [((2, 37, 23, 21), 1, False), ((2, 37, 23, 21), 1, True),
                                    ((7, 300, 4, 4), 1, False), ((2, 20001), -1, False),
                                    ((40001,), None, False)],
                         ids=["nchw", "channels_last", "short-runs", "linear-wide", "no-bias"])
def test_cpu_threaded_sizes_both_isas(layout, isa, monkeypatch):
    """The C++ kernels above torch's grain (threaded, fixed chunks of whole runs), with the AVX2
    loops (auto, on a CPU that has them) and with the baseline loops every other x86 CPU runs."""
    if isa == "baseline":
        monkeypatch.setenv("GANKERN_CPU_NO_AVX2", "1")
    shape, dim, cl = layout
    gen = torch.Generator().manual_seed(11)
    x64, dy64, v64 = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 for _ in range(3))
    b64 = None if dim is None else torch.randn(shape[dim], generator=gen, dtype=torch.float64)
    dim = 0 if dim is None else dim
    for act, gain, clamp in (("lrelu", 1.0, None), ("tanh", 1.3, 0.9)):
        for dtype in (torch.float32, torch.bfloat16):
            xs = [t.to(dtype).double() for t in (x64, dy64, v64)]
            b = None if b64 is None else b64.to(dtype).double()
            alpha = DEFAULT_ALPHA.get(act, 0.0)

            def prep(t):
                t = t.to(dtype)
                return t.contiguous(memory_format=torch.channels_last) if cl else t

            def orders(x, b, dy, v, fn):
                x = x.detach().requires_grad_(True)
                dy = dy.detach().requires_grad_(True)
                y = fn(x, b)
                (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
                outs = [y, dx]
                if act not in PIECEWISE_LINEAR:
                    outs += list(torch.autograd.grad(dx, (x, dy), v))
                return [o.detach() for o in outs]

            ref = orders(*xs[:1], b, *xs[1:], lambda x, b: (plain(x, b, act, alpha, gain, clamp, dim) if b is not None
                                                           else bias_act(x, None, act, gain=gain, clamp=clamp,
                                                                         impl="reference")))
            out = orders(prep(xs[0]), None if b is None else b.to(dtype), prep(xs[1]), prep(xs[2]),
                         lambda x, b: bias_act(x, b, act, gain=gain, clamp=clamp, dim=dim, impl="cpu"))
            for name, o, r in zip(["y", "dx", "d2x", "d2dy"], out, ref):
                assert o.dtype == dtype
                if cl:
                    assert o.is_contiguous(memory_format=torch.channels_last)
                testing.assert_close_to_reference(o, r, dtype, name=f"{act} {dtype} {name}",
                                                  tol=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.skipif(not NATIVE_CPU, reason="native CPU kernels not built")
def test_native_checks_reject_bad_pointers():
    """_native is the pointer boundary: its one-pass check must let through only what the
    explaining checks accept, and every bad tensor gets the error naming it."""
    from gankern import _native

    x, b, dy = torch.randn(2, 3, 4), torch.randn(3), torch.randn(2, 3, 4)
    lrelu = ACTS["lrelu"]
    ok = _native.bias_act(1, lrelu, x, b, dy, None, 0.2, 1.0, None, 4, 3)
    torch.testing.assert_close(ok, torch.where(x + b[:, None] > 0, dy, 0.2 * dy))
    # A Parameter (any layer's bias) runs too; other subclasses take the explaining checks.
    torch.testing.assert_close(_native.bias_act(1, lrelu, torch.nn.Parameter(x), b, dy, None, 0.2, 1.0, None, 4, 3), ok)
    bad = [
        (dict(x=x.transpose(0, 2)), ValueError, "x must be dense"),
        (dict(x=x.to(torch.int32)), TypeError, "x must"),
        (dict(dy=None), ValueError, "dy is required"),
        (dict(dy=dy.double()), TypeError, "dy must"),
        (dict(dy=dy[:, :, :3]), ValueError, "dy must have x's shape"),
        (dict(dy=dy.transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "dy must have x's shape"),
        (dict(b=b.double()), TypeError, "b must"),
        (dict(b=torch.randn(4)), ValueError, "b must"),
        (dict(b=torch.randn(3, 2)[:, 0]), ValueError, "b must"),
        (dict(inner=5), ValueError, "does not tile"),
    ]
    for change, exc, match in bad:
        args = dict(x=x, b=b, dy=dy, inner=4)
        args.update(change)
        with pytest.raises(exc, match=match):
            _native.bias_act(1, lrelu, args["x"], args["b"], args["dy"], None, 0.2, 1.0, None, args["inner"], 3)
    with pytest.raises(ValueError, match="v is required"):
        _native.bias_act(2, lrelu, x, b, dy, None, 0.2, 1.0, None, 4, 3)
