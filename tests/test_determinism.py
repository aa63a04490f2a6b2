"""Determinism (issue 8): the same inputs give bit-identical results run to run on the CPU,
for every op and backend here: the native kernels use static schedules and fixed reduction
trees, never atomics. A training step built from the ops is checked the same way."""

import pytest
import torch
from conftest import DEVICE, backends_for
from torch import nn

import gankern as gk
from gankern.ops.ema import IMPLEMENTED as EMA_IMPLS
from gankern.ops.norm_penalty import IMPLEMENTED as NP_IMPLS
from gankern.ops.spectral_norm import IMPLEMENTED as SN_IMPLS

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="bit-identity is promised on the CPU only")


def _twice(fn):
    return fn(), fn()


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        # A parameter the penalty does not reach (D's last bias) has no gradient in either run.
        assert (x is None and y is None) or torch.equal(x, y), "results differ between two identical runs"
    assert any(x is not None for x in a)


@pytest.mark.parametrize("backend", backends_for(EMA_IMPLS))
def test_ema_update(backend):
    def run():
        g = torch.Generator().manual_seed(0)
        sizes = (7, 4097, 300_000)  # the last takes the OpenMP path (> 2^18 elements)
        shadow = [torch.randn(n, generator=g) for n in sizes]
        params = [torch.randn(n, generator=g).bfloat16() for n in sizes]
        gk.ops.ema_update_(shadow, params, 0.013, impl=backend)
        return shadow

    _assert_identical(*_twice(run))


@pytest.mark.parametrize("backend", backends_for(SN_IMPLS))
def test_spectral_norm_forward_backward(backend):
    def run():
        torch.manual_seed(0)
        layer = gk.spectral_norm(nn.Conv2d(5, 11, 3), impl=backend)
        x = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(1))
        layer(x).square().mean().backward()
        return [layer.parametrizations.weight.original.grad, layer.weight.detach(),
                layer.parametrizations.weight[0]._u, layer.parametrizations.weight[0]._v]

    _assert_identical(*_twice(run))


@pytest.mark.parametrize("backend", backends_for(NP_IMPLS))
@pytest.mark.parametrize("kind", ["wgan-gp", "r1", "dragan"])
def test_gradient_penalty_with_generator(backend, kind):
    def run():
        torch.manual_seed(0)
        D = nn.Sequential(nn.Linear(6, 9), nn.LeakyReLU(0.2), nn.Linear(9, 1))
        g = torch.Generator().manual_seed(3)
        real, fake = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
        penalty, norms = gk.gradient_penalty(D, real, fake, kind=kind, generator=torch.Generator().manual_seed(4),
                                             return_norms=True, impl=backend)
        penalty.backward()
        return [penalty.detach(), norms] + [p.grad for p in D.parameters()]

    _assert_identical(*_twice(run))
