"""torch.func transforms through gk.spectral_norm behave as through torch's parametrization.

torch's spectral norm is plain torch math, so torch.func.grad / vjp / jacrev / vmap go through
it (with functional_call, the usual way to take per-parameter gradients or meta-gradients of a
D), and the power iteration still updates u and v in place in training mode. gankern's fused
kernels read raw storage that functorch's wrapped tensors lack, so under a transform the layer
runs torch's own math instead (gankern/nn/spectral_norm.py). Each test runs torch's module beside
gankern's in float64 from the same state and requires the same results and buffers to 1e-12.
"""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from conftest import backends_for

import gankern as gk
from gankern.ops import spectral_norm as sn_ops
from gankern.testing import rel_error

BACKENDS = [b for b in backends_for(sn_ops.IMPLEMENTED) if b != "reference"]  # reference: torch's math anyway
TOL = 1e-12


def _d():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(3 * 4 * 4, 1))


def twins(backend, seed=0):
    torch.manual_seed(seed)
    base = _d().double()
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    for m in (theirs[0], theirs[3]):
        torch.manual_seed(seed + 1)
        torch_sn(m)
    for m in (ours[0], ours[3]):
        torch.manual_seed(seed + 1)
        gk.spectral_norm(m, impl=backend)
    return theirs, ours


def _x(seed=3):
    return torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _buffers_equal(theirs, ours):
    for (name, t), (_, o) in zip(theirs.named_buffers(), ours.named_buffers()):
        assert rel_error(o, t) <= TOL, name


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_through_functional_call_equals_torch(backend, training):
    x = _x()
    results = []
    for model in twins(backend):
        model.train(training)
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())  # updated in place by the power method, as torch does

        def loss(p):
            return functional_call(model, (p, buffers), (x,)).square().mean()

        results.append(grad(loss)(params))
    theirs, ours = results
    assert theirs.keys() == ours.keys()
    for name in theirs:
        assert rel_error(ours[name], theirs[name]) <= TOL, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_power_method_under_grad_updates_u_v_as_torch(backend):
    theirs, ours = twins(backend)
    x = _x()
    for model in (theirs, ours):
        params = dict(model.named_parameters())
        for _ in range(3):  # three training forwards: three iterations on the stored u, v
            grad(lambda p: functional_call(model, p, (x,)).sum())(params)
    _buffers_equal(theirs, ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vjp_and_jacrev_equal_torch(backend):
    x = _x()
    out = []
    for model in twins(backend):
        model.eval()  # the transforms run the forward more than once: no iteration in between
        w = dict(model.named_parameters())
        y, pull = vjp(lambda p: functional_call(model, p, (x,)), w)
        jac = jacrev(lambda p: functional_call(model, p, (x,)))(w)
        out.append((y, pull(torch.ones_like(y))[0], jac))
    (y_t, g_t, j_t), (y_o, g_o, j_o) = out
    assert rel_error(y_o, y_t) <= TOL
    for name in g_t:
        assert rel_error(g_o[name], g_t[name]) <= TOL, name
        assert rel_error(j_o[name], j_t[name]) <= TOL, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_over_samples_equals_torch(backend):
    x = _x()
    models, outs = twins(backend), []
    for model in models:
        model.train()
        outs.append(vmap(lambda xi: model(xi.unsqueeze(0)).squeeze(0))(x))
    assert rel_error(outs[1], outs[0]) <= TOL
    _buffers_equal(*models)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpu", "cuda")])
def test_outside_transforms_the_fused_path_still_runs(backend):
    _, ours = twins(backend)
    ours.train()
    ours(_x())
    assert ours[0].parametrizations.weight[0]._plan is not None  # the native plan, built by the fused forward
