"""Lazy regularization helpers: the StyleGAN2 lr/beta correction and the every-k weighting."""

import math

import pytest
import torch
from torch import nn

import gankern as gk
from gankern.train import LazyPenalty, is_lazy_step, lazy_optimizer_args, lazy_ratio


def test_stylegan2_correction():
    lr, betas = lazy_optimizer_args(0.002, (0.0, 0.99), every=16)
    c = 16 / 17
    assert lr == pytest.approx(0.002 * c, rel=1e-15)
    assert betas[0] == 0.0 and betas[1] == pytest.approx(0.99 ** c, rel=1e-15)
    assert lazy_optimizer_args(1e-3, (0.5, 0.9), every=1) == (1e-3, (0.5, 0.9))
    assert lazy_ratio(4) == pytest.approx(0.8)


def test_penalty_every_k_weighted_by_k():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    real = torch.randn(4, 6)
    lazy = LazyPenalty(lambda D, x: gk.gradient_penalty(D, x, kind="r1", impl="reference"), every=4)
    outs = [lazy(D, real) for _ in range(9)]
    due = [o is not None for o in outs]
    assert due == [is_lazy_step(s, 4) for s in range(9)] == [True, False, False, False, True, False,
                                                                False, False, True]
    full = gk.gradient_penalty(D, real, kind="r1", impl="reference")
    assert math.isclose(outs[0].item(), 4 * full.item(), rel_tol=1e-6)
    outs[0].backward()  # reaches D
    assert D[0].weight.grad is not None
    state = lazy.state_dict()
    resumed = LazyPenalty(lazy.penalty, every=1)
    resumed.load_state_dict(state)
    assert resumed.every == 4 and resumed.step == 9 and resumed(D, real) is None


def test_return_norms_tuple_weighted():
    D = nn.Sequential(nn.Linear(6, 1))
    real = torch.randn(3, 6)
    lazy = LazyPenalty(lambda: gk.gradient_penalty(D, real, kind="r1", return_norms=True), every=2)
    p, n = lazy()
    p1, n1 = gk.gradient_penalty(D, real, kind="r1", return_norms=True)
    torch.testing.assert_close(p, 2 * p1)
    torch.testing.assert_close(n, n1)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: lazy_ratio(0), ValueError, "every"),
    (lambda: lazy_ratio(2.0), TypeError, "every"),
    (lambda: lazy_optimizer_args(-1.0), ValueError, "lr"),
    (lambda: lazy_optimizer_args(1e-3, (0.9,)), ValueError, "betas"),
    (lambda: lazy_optimizer_args(1e-3, (0.9, 1.0)), ValueError, "betas"),
    (lambda: LazyPenalty(3), TypeError, "penalty"),
    (lambda: is_lazy_step(3, -2), ValueError, "every"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
