"""gk.spectral_norm against torch.nn.utils.parametrizations.spectral_norm, on every backend.

Both modules are registered from the same RNG state and trained side by side: u, v, sigma, the
output and every gradient must agree at every step (float64: to rounding; float32: DESIGN.md
tolerance), in training and in eval mode, for the layer types GAN discriminators use.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from conftest import backends_for

import gankern as gk
from gankern.ops import spectral_norm as sn_ops
from gankern.testing import rel_error

BACKENDS = backends_for(sn_ops.IMPLEMENTED)

# (name, layer factory, input factory, dim) -- small and odd-sized: the Triton interpreter is slow.
LAYERS = {
    "linear": (lambda: nn.Linear(7, 5), lambda g: torch.randn(4, 7, generator=g), None),
    "linear_dim1": (lambda: nn.Linear(7, 5), lambda g: torch.randn(4, 7, generator=g), 1),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), lambda g: torch.randn(2, 3, 9, generator=g), None),
    "conv2d": (lambda: nn.Conv2d(3, 5, 3), lambda g: torch.randn(2, 3, 6, 6, generator=g), None),
    "conv2d_dim2": (lambda: nn.Conv2d(3, 5, 3), lambda g: torch.randn(2, 3, 6, 6, generator=g), 2),
    "conv2d_dim-1": (lambda: nn.Conv2d(3, 5, 3), lambda g: torch.randn(2, 3, 6, 6, generator=g), -1),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), lambda g: torch.randn(2, 2, 4, 4, 4, generator=g), None),
    "convT2d": (lambda: nn.ConvTranspose2d(3, 4, 3), lambda g: torch.randn(2, 3, 5, 5, generator=g), None),
    "embedding": (lambda: nn.Embedding(11, 6), lambda g: torch.randint(0, 11, (4, 3), generator=g), None),
}
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
# The Triton interpreter costs ~0.1 s a step: fewer steps there, the full count elsewhere.
SLOW = {"triton"}


def steps_for(backend, steps):
    return max(2, steps // 7) if backend in SLOW else steps


def make_pair(layer, dtype, n_iter, backend, seed=0):
    factory, _, dim = LAYERS[layer]
    torch.manual_seed(seed)
    base = factory().to(dtype)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    torch_sn(a, n_power_iterations=n_iter, dim=dim)
    torch.manual_seed(seed + 1)
    gk.spectral_norm(b, n_power_iterations=n_iter, dim=dim, impl=backend)
    return a, b


def inputs_for(layer, dtype, seed):
    x = LAYERS[layer][1](torch.Generator().manual_seed(seed))
    return x if layer == "embedding" else x.to(dtype)


def check_state(a, b, tol, what):
    pa, pb = a.parametrizations.weight, b.parametrizations.weight
    for key in ("_u", "_v"):
        err = rel_error(pb[0]._buffers[key], pa[0]._buffers[key])
        assert err <= tol, f"{what}: {key} differs by {err:.2e}"
    err = rel_error(pb.original, pa.original)
    assert err <= tol, f"{what}: weight differs by {err:.2e}"


def run_steps(layer, dtype, n_iter, backend, steps, train=True, tol_scale=1.0):
    a, b = make_pair(layer, dtype, n_iter, backend)
    tol = TOL[dtype] * tol_scale
    check_state(a, b, tol, "after registration")
    a.train(train)
    b.train(train)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.5)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.5)
    for step in range(steps):
        x = inputs_for(layer, dtype, step)
        ya, yb = a(x), b(x)
        err = rel_error(yb, ya)
        assert err <= tol, f"step {step}: output differs by {err:.2e}"
        sig_a = a.parametrizations.weight.original.norm() / a.weight.norm()
        sig_b = b.parametrizations.weight.original.norm() / b.weight.norm()
        assert rel_error(sig_b, sig_a) <= tol, f"step {step}: sigma differs"
        w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(100 + step), dtype=dtype)
        opt_a.zero_grad()
        opt_b.zero_grad()
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert na == nb
            err = rel_error(pb.grad, pa.grad)
            assert err <= tol, f"step {step}: grad of {na} differs by {err:.2e}"
        opt_a.step()
        opt_b.step()
        check_state(a, b, tol, f"step {step}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", list(LAYERS))
def test_equal_to_torch_float64(layer, backend):
    run_steps(layer, torch.float64, 1, backend, steps=steps_for(backend, 3))


# n_iter=2 adds little over 1 and 3 on the slow interpreter; every other backend runs all three.
F32_CASES = [(layer, n, b) for b in BACKENDS for layer in ("linear", "conv2d", "convT2d", "embedding")
             for n in (1, 2, 3) if not (b in SLOW and n == 2)]


@pytest.mark.parametrize("layer, n_iter, backend", F32_CASES)
def test_equal_to_torch_float32(layer, n_iter, backend):
    run_steps(layer, torch.float32, n_iter, backend, steps=steps_for(backend, 3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", ["linear", "conv2d_dim2", "convT2d"])
def test_eval_equal_to_torch(layer, backend):
    run_steps(layer, torch.float64, 2, backend, steps=steps_for(backend, 3), train=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hundred_steps_equal_to_torch(dtype, backend):
    # Power iteration contracts errors, so rounding differences must not build up over training.
    run_steps("conv2d", dtype, 1, backend, steps=steps_for(backend, 100), tol_scale=10.0 if dtype == torch.float32 else 1.0)


def test_1d_weight_divided_by_norm():
    m = gk.spectral_norm(nn.Linear(3, 4), name="bias")
    b = m.parametrizations.bias.original
    assert torch.equal(m.bias, torch.nn.functional.normalize(b, dim=0))
    assert not hasattr(m.parametrizations.bias[0], "_u")


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_interchange(backend):
    a, b = make_pair("conv2d", torch.float64, 1, backend)
    assert list(a.state_dict()) == list(b.state_dict())
    # Train each differently, then swap states both ways: outputs then agree in eval mode.
    for m, seed in ((a, 5), (b, 6)):
        for s in range(2):
            m(inputs_for("conv2d", torch.float64, seed + s)).sum().backward()
    x = inputs_for("conv2d", torch.float64, 9)
    a2, b2 = copy.deepcopy(a).eval(), copy.deepcopy(b).eval()
    a2.load_state_dict(b.state_dict())
    b2.load_state_dict(a.state_dict())
    assert rel_error(a2(x), b.eval()(x)) <= 1e-12
    assert rel_error(b2(x), a.eval()(x)) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_deepcopy_is_independent(backend):
    _, m = make_pair("conv2d", torch.float64, 1, backend)
    m.eval()
    x = inputs_for("conv2d", torch.float64, 0)
    with torch.no_grad():
        y = m(x)
    c = copy.deepcopy(m)
    with torch.no_grad():
        assert torch.equal(c(x), y)
        c.parametrizations.weight.original.mul_(2.0)  # a changed copy must not touch the source
        assert torch.equal(m(x), y)
        assert rel_error(c(x) - c.bias.view(1, -1, 1, 1), y - m.bias.view(1, -1, 1, 1)) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_follows_changes(backend):
    # Eval recomputes W/sigma from the current W, u and v (tests/test_conformance_torch_spectral_norm.py
    # covers writes no version counter sees).
    a, b = make_pair("linear", torch.float64, 1, backend)
    a.eval()
    b.eval()
    x = inputs_for("linear", torch.float64, 0)
    with torch.no_grad():
        assert rel_error(b(x), a(x)) <= 1e-12
        for m in (a, b):
            m.parametrizations.weight.original.add_(0.1)
        assert rel_error(b(x), a(x)) <= 1e-12
        u = torch.nn.functional.normalize(torch.randn(5, dtype=torch.float64), dim=0)
        for m in (a, b):
            m.parametrizations.weight[0]._u.copy_(u)
        assert rel_error(b(x), a(x)) <= 1e-12
    # With grad enabled the eval forward still back-propagates, repeatedly.
    for _ in range(2):
        a.zero_grad()
        b.zero_grad()
        a(x).square().sum().backward()
        b(x).square().sum().backward()
        assert rel_error(b.parametrizations.weight.original.grad,
                         a.parametrizations.weight.original.grad) <= 1e-12


def test_two_forwards_one_backward():
    # The GAN pattern D(real) - D(fake): buffers change between the forwards, backward still works.
    for backend in BACKENDS:
        a, b = make_pair("linear", torch.float64, 1, backend)
        for m in (a, b):
            (m(inputs_for("linear", torch.float64, 0)) - m(inputs_for("linear", torch.float64, 1))).sum().backward()
        assert rel_error(b.parametrizations.weight.original.grad,
                         a.parametrizations.weight.original.grad) <= 1e-12


@pytest.mark.parametrize("bad, match, exc", [
    (dict(n_power_iterations=0), "n_power_iterations", ValueError),
    (dict(n_power_iterations=1.5), "n_power_iterations", TypeError),
    (dict(n_power_iterations=True), "n_power_iterations", TypeError),
    (dict(eps=-1e-3), "eps", ValueError),  # torch takes it (acts as 0); never meant
    (dict(eps=float("nan")), "eps", ValueError),
    (dict(eps="1e-12"), "eps", TypeError),
    (dict(dim=1.0), "dim", TypeError),
    (dict(name="nope"), "name", ValueError),
    (dict(dim=2), "dim", ValueError),
    (dict(impl="fast"), "impl", ValueError),
])
def test_bad_input_raises_and_changes_nothing(bad, match, exc):
    m = nn.Linear(3, 4)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(exc, match=match):
        gk.spectral_norm(m, **bad)
    assert not hasattr(m, "parametrizations")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_zero_dim_weight_raises():
    m = nn.Module()
    m.weight = nn.Parameter(torch.tensor(1.0))
    with pytest.raises(ValueError, match="0-d"):
        gk.spectral_norm(m)
    with pytest.raises(TypeError, match="module"):
        gk.spectral_norm("not a module")


NATIVE = [b for b in BACKENDS if b in ("cpu", "cuda")]


@pytest.mark.parametrize("backend", NATIVE)
def test_training_plan_follows_dtype_and_buffer_changes(backend):
    # The native training forward validates once (a plan); .to(dtype), a replaced buffer or a
    # replaced weight must revalidate it, never reuse stale sizes or pointers.
    a, b = make_pair("conv2d", torch.float32, 1, backend)
    x = inputs_for("conv2d", torch.float32, 0)
    assert rel_error(b(x), a(x)) <= TOL[torch.float32]
    a.double()
    b.double()
    x = x.double()
    assert rel_error(b(x), a(x)) <= TOL[torch.float32]
    u = torch.nn.functional.normalize(torch.randn(5, dtype=torch.float64), dim=0)
    for m in (a, b):
        m.parametrizations.weight[0]._u = u.clone()
    assert rel_error(b(x), a(x)) <= TOL[torch.float32]
    with torch.no_grad():
        for m in (a, b):
            m.parametrizations.weight.original = nn.Parameter(m.parametrizations.weight.original[:3].clone())
            m.parametrizations.weight[0]._u = u[:3].clone()
    assert rel_error(b.weight, a.weight) <= TOL[torch.float32]
    check_state(a, b, TOL[torch.float32], "after the replaced weight")


@pytest.mark.parametrize("backend", NATIVE)
def test_stale_graph_backward_rejects_a_changed_weight(backend):
    # A graph built before model.double() keeps its own sizes and dtype code for the backward
    # (the plan was revalidated in between): the swapped weight is refused, never read as the
    # old dtype, and a graph built after the change still equals torch's.
    models = []
    for register in (torch_sn, lambda m: gk.spectral_norm(m, impl=backend)):
        torch.manual_seed(0)
        models.append(register(nn.Linear(6, 5, bias=False)))
    a, b = models
    x = torch.randn(3, 6)
    a(x)
    old = b(x).sum()
    for m in (a, b):
        m.double()
    with pytest.raises(ValueError, match="between forward and backward"):
        old.backward()
    for m in (a, b):
        m(x.double()).sum().backward()
    assert rel_error(b.parametrizations.weight.original.grad,
                     a.parametrizations.weight.original.grad) <= TOL[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_through_training_forward(backend):
    # create_graph=True through a training forward (a penalty on weight gradients): the second
    # order runs through the differentiable backward op and equals torch's.
    a, b = make_pair("linear", torch.float64, 1, backend)
    x = inputs_for("linear", torch.float64, 0)
    for m in (a, b):
        w = m.parametrizations.weight.original
        (g,) = torch.autograd.grad(m(x).square().sum(), w, create_graph=True)
        g.square().sum().backward()
    check_state(a, b, TOL[torch.float64], "after the double backward")
    assert rel_error(b.parametrizations.weight.original.grad,
                     a.parametrizations.weight.original.grad) <= 1e-10


def test_backend_follows_gankern_impl_and_impl_changes(monkeypatch):
    # The layer keeps its resolved backend per (impl, GANKERN_IMPL, device, complex); changing
    # any of them mid-life is seen on the next forward.
    seen = []
    real_train_forward = sn_ops.train_forward

    def spy(*args, **kwargs):
        seen.append(args[6])  # the backend argument
        return real_train_forward(*args, **kwargs)

    monkeypatch.setattr(sn_ops, "train_forward", spy)
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    m = gk.spectral_norm(nn.Linear(6, 4))
    seen.clear()  # registration runs the parametrization once, as torch's does
    auto = gk._backend.resolve("auto", torch.device("cpu"), sn_ops.IMPLEMENTED)
    m.weight
    monkeypatch.setenv("GANKERN_IMPL", "reference")
    m.weight  # reference runs spectral_norm_reference, not train_forward
    monkeypatch.delenv("GANKERN_IMPL")
    m.weight
    m.parametrizations.weight[0].impl = "reference"
    m.weight
    m.parametrizations.weight[0].impl = "auto"
    m.weight
    assert seen == [auto, auto, auto]
    assert m.parametrizations.weight[0]._resolved[1] == auto



@pytest.mark.parametrize("impl, shape, torch_math", [
    ("auto", (16, 16, 3, 3), True),     # below the crossover: torch's math
    ("auto", (48, 48, 3, 3), False),    # above it: fused
    ("cpu", (16, 16, 3, 3), False),     # a named backend always runs its kernels
])
def test_eval_with_grad_on_cpu_takes_torch_math_below_the_crossover(impl, shape, torch_math, monkeypatch):
    # gankern/nn/spectral_norm.py EVAL_GRAD_FUSED_FROM: measured by scripts/crossover.py sn_eval.
    import importlib

    sn_module = importlib.import_module("gankern.nn.spectral_norm")  # the module, not the function
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    if impl == "auto":
        assert (shape[0] * shape[1] * shape[2] * shape[3] < sn_module.EVAL_GRAD_FUSED_FROM) == torch_math
    calls = []
    real_reference = sn_module.spectral_norm_reference
    monkeypatch.setattr(sn_module, "spectral_norm_reference", lambda *a: calls.append(1) or real_reference(*a))
    torch.manual_seed(0)
    base = nn.Conv2d(shape[1], shape[0], shape[2:]).double()
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    torch_sn(theirs)
    torch.manual_seed(1)
    gk.spectral_norm(ours, impl=impl)
    x = torch.randn(2, shape[1], 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for m in (theirs, ours):
        m.eval()
        m(x).square().sum().backward()
    assert bool(calls) == torch_math
    assert rel_error(ours.parametrizations.weight.original.grad, theirs.parametrizations.weight.original.grad) <= 1e-12
    with torch.no_grad():  # eval under no_grad stays fused at every size
        calls.clear()
        assert rel_error(ours(x), theirs(x)) <= 1e-12
        assert not calls
