"""Each GAN loss against its paper's formula, written independently with sigmoid/log in float64."""

import math

import pytest
import torch

from gankern.train import LOSSES, d_loss, g_loss
from gankern.train.losses import qp_distance

s = torch.sigmoid


def formulas(name, r, f, xr=None, xf=None, lam=10.0):
    """(D loss, G loss) straight from the papers (see gankern/train/losses.py)."""
    if name == "saturating":
        return -(s(r).log().mean() + (1 - s(f)).log().mean()), (1 - s(f)).log().mean()
    if name == "ns":
        return -(s(r).log().mean() + (1 - s(f)).log().mean()), -s(f).log().mean()
    if name == "wgan":
        return f.mean() - r.mean(), -f.mean()
    if name == "hinge":
        return torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(), -f.mean()
    if name == "lsgan":
        return 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean(), 0.5 * ((f - 1) ** 2).mean()
    if name == "rsgan":
        return -s(r - f).log().mean(), -s(f - r).log().mean()
    if name == "ragan":
        d = -s(r - f.mean()).log().mean() - (1 - s(f - r.mean())).log().mean()
        g = -s(f - r.mean()).log().mean() - (1 - s(r - f.mean())).log().mean()
        return d, g
    if name == "gan-qp":
        dist = (xr - xf).abs().flatten(1).mean(1)
        return (-(r - f) + (r - f) ** 2 / (2 * lam * dist)).mean(), (r - f).mean()
    raise AssertionError(name)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("batch", [1, 7])
def test_loss_matches_formula(name, batch):
    g = torch.Generator().manual_seed(batch)
    r = torch.randn(batch, generator=g, dtype=torch.float64) * 2
    f = torch.randn(batch, generator=g, dtype=torch.float64) * 2
    xr = torch.randn(batch, 3, 5, generator=g, dtype=torch.float64)
    xf = torch.randn(batch, 3, 5, generator=g, dtype=torch.float64)
    want_d, want_g = formulas(name, r, f, xr, xf, lam=3.0)
    got_d = d_loss(name, r, f, xr, xf, qp_lambda=3.0)
    got_g = g_loss(name, r, f)
    torch.testing.assert_close(got_d, want_d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_g, want_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_accepts_b1_scores_and_gradients_match(name):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6, 1, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(6, 1, generator=g, dtype=torch.float64, requires_grad=True)
    xr, xf = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(d_loss(name, r, f, xr, xf), [r, f])
    want = torch.autograd.grad(formulas(name, r[:, 0], f[:, 0], xr, xf)[0], [r, f])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["saturating", "ns", "rsgan", "ragan"])
def test_logistic_losses_stay_finite_for_extreme_logits(name):
    r = torch.tensor([200.0, -200.0])
    f = torch.tensor([-200.0, 200.0])
    assert torch.isfinite(d_loss(name, r, f)) and torch.isfinite(g_loss(name, r, f))


def test_ns_and_saturating_share_d_but_not_g():
    r, f = torch.tensor([0.3, -1.0]), torch.tensor([-2.0, 0.5])
    assert d_loss("ns", r, f) == d_loss("saturating", r, f)
    assert g_loss("ns", r, f) != g_loss("saturating", r, f)


def test_gan_qp_lambda_and_identical_pairs():
    r, f = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5])
    x = torch.ones(2, 3)
    y = torch.zeros(2, 3)
    assert d_loss("gan-qp", r, f, x, y, qp_lambda=1.0) > d_loss("gan-qp", r, f, x, y, qp_lambda=100.0)
    assert torch.isfinite(d_loss("gan-qp", r, f, x, x.clone()))
    assert torch.equal(qp_distance(x, y), torch.ones(2))


def test_bad_loss_arguments():
    r = torch.zeros(3)
    with pytest.raises(ValueError, match="loss must be one of"):
        d_loss("minimax", r, r)
    with pytest.raises(ValueError, match="loss must be one of"):
        g_loss("", r, r)
    with pytest.raises(ValueError, match="fake_scores must hold one D score per sample"):
        d_loss("ns", r, torch.zeros(3, 2))
    with pytest.raises(TypeError, match="real_scores must be a tensor"):
        d_loss("ns", [0.0], r)
    with pytest.raises(ValueError, match="needs the real and fake inputs"):
        d_loss("gan-qp", r, r)
    with pytest.raises(ValueError, match="needs D's scores on a real batch"):
        g_loss("ragan", None, r)
    with pytest.raises(ValueError, match="pairs real and fake"):
        d_loss("rsgan", torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="qp_lambda"):
        d_loss("gan-qp", r, r, torch.zeros(3, 1), torch.ones(3, 1), qp_lambda=0.0)
    assert math.isfinite(float(d_loss("hinge", r, r)))
