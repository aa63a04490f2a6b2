"""What gk.gradient_penalty promises its callers (issue 13 item 6, issue 18): the alpha
convention, the weight already inside the penalty, a conditional D through a closure, the
output shapes D may return, and bad arguments refused before D runs, naming the argument."""

import pytest
import torch
from torch import nn

import gankern as gk

B = 6


def mlp_d(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def plain_penalty(D, x_hat, center, weight):
    """The definition written out: autograd of D at x_hat, per-sample norms, weight*mean((n-c)^2)."""
    x = x_hat.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    n = g.reshape(g.shape[0], -1).norm(dim=1)
    return weight * ((n - center) ** 2).mean()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(B, 5, generator=gen, dtype=torch.float64),
            torch.randn(B, 5, generator=gen, dtype=torch.float64))


def test_alpha_convention_zero_is_real_one_is_fake():
    """x_hat = real + alpha * (fake - real): alpha = 0 is the penalty at real, 1 at fake, and a
    per-sample alpha picks each row's own point."""
    D = mlp_d()
    real, fake = _inputs()
    for a, point in ((0.0, real), (1.0, fake)):
        got = gk.gradient_penalty(D, real, fake, kind="wgan-gp", alpha=torch.full((B,), a, dtype=torch.float64))
        torch.testing.assert_close(got, plain_penalty(D, point, 1.0, 10.0), rtol=1e-12, atol=0)
    alpha = torch.rand(B, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = gk.gradient_penalty(D, real, fake, kind="wgan-gp", alpha=alpha)
    torch.testing.assert_close(got, plain_penalty(D, real + alpha * (fake - real), 1.0, 10.0),
                               rtol=1e-12, atol=0)


def test_weight_is_inside_the_penalty():
    """weight multiplies the mean once: 10 * the weight-1 penalty, and 0 gives 0; for r1/r2 the
    weight is gamma, the factor gamma/2."""
    D = mlp_d()
    real, fake = _inputs()
    alpha = torch.rand(B, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    one = gk.gradient_penalty(D, real, fake, kind="wgan-gp", weight=1.0, alpha=alpha)
    ten = gk.gradient_penalty(D, real, fake, kind="wgan-gp", weight=10.0, alpha=alpha)
    default = gk.gradient_penalty(D, real, fake, kind="wgan-gp", alpha=alpha)
    torch.testing.assert_close(ten, 10 * one, rtol=1e-12, atol=0)
    torch.testing.assert_close(default, ten, rtol=0, atol=0)
    assert gk.gradient_penalty(D, real, fake, kind="wgan-gp", weight=0.0, alpha=alpha).item() == 0.0
    r1 = gk.gradient_penalty(D, real, kind="r1", weight=4.0)
    torch.testing.assert_close(r1, plain_penalty(D, real, 0.0, 2.0), rtol=1e-12, atol=0)


class ConditionalD(nn.Module):
    """A projection-style conditional D: D(x, y) = f(x) + <embed(y), h(x)>."""

    def __init__(self, classes=3):
        super().__init__()
        self.h = nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.2))
        self.out = nn.Linear(8, 1)
        self.embed = nn.Embedding(classes, 8)

    def forward(self, x, y):
        h = self.h(x)
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1)


def test_conditional_d_through_a_closure():
    """gradient_penalty(lambda x: D(x, y), ...) is the penalty of the conditional D at the labels
    y, differentiated with respect to x only; every parameter (embedding included) gets the
    gradient of the plain formula."""
    torch.manual_seed(4)
    D = ConditionalD().double()
    real, fake = _inputs()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    alpha = torch.rand(B, dtype=torch.float64)
    got = gk.gradient_penalty(lambda x: D(x, y), real, fake, kind="wgan-gp", alpha=alpha)
    params = list(D.parameters())  # out.bias does not change dD/dx: no gradient from the penalty
    got_grads = torch.autograd.grad(got, params, allow_unused=True)
    want = plain_penalty(lambda x: D(x, y), real + alpha[:, None] * (fake - real), 1.0, 10.0)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(got_grads, want_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert got_grads[-1].abs().sum() > 0  # the embedding is reached


@pytest.mark.parametrize("shape", [(B,), (B, 1), (B, 1, 1), (B, 1, 1, 1)])
def test_one_score_per_sample_in_any_trailing_ones_shape(shape):
    """A DCGAN-style conv D returns (B, 1, 1, 1): the same penalty as its .view(-1)."""
    D = mlp_d()
    real, fake = _inputs()
    alpha = torch.rand(B, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = gk.gradient_penalty(lambda x: D(x).reshape(shape), real, fake, kind="wgan-gp", alpha=alpha)
    want = gk.gradient_penalty(lambda x: D(x).view(-1), real, fake, kind="wgan-gp", alpha=alpha)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(B, 1, 2), (1, B, 1), (B, 2, 1)])
def test_more_than_one_score_per_sample_is_refused(shape):
    D = mlp_d()
    real, _ = _inputs()
    with pytest.raises(ValueError, match="one score per sample"):
        gk.gradient_penalty(lambda x: D(x).expand(B, 2).reshape(shape) if 2 in shape else D(x).reshape(shape),
                            real, kind="r1")


@pytest.mark.parametrize("bad, exc, match", [
    (dict(weight=-1.0), ValueError, "weight"),
    (dict(weight=float("nan")), ValueError, "weight"),
    (dict(weight="10"), TypeError, "weight"),
    (dict(alpha=torch.full((B,), 2.0, dtype=torch.float64)), ValueError, "alpha"),
    (dict(alpha=torch.full((B, 1), -0.1, dtype=torch.float64)), ValueError, "alpha"),
    (dict(alpha=torch.full((B,), float("nan"), dtype=torch.float64)), ValueError, "alpha"),
    (dict(center=float("inf")), ValueError, "center"),
    (dict(center="1"), TypeError, "center"),
])
def test_bad_arguments_change_nothing(bad, exc, match):
    """Refused before D runs: D is never called, no parameter or gradient changes."""
    D = mlp_d()
    calls = []
    before = [p.detach().clone() for p in D.parameters()]
    real, fake = _inputs()

    def counting_d(x):
        calls.append(1)
        return D(x)

    with pytest.raises(exc, match=match):
        gk.gradient_penalty(counting_d, real, fake, kind="wgan-gp", **bad)
    assert not calls
    assert all(p.grad is None for p in D.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, D.parameters()))


def test_norm_penalty_refuses_negative_weight():
    g = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="weight"):
        gk.ops.norm_penalty(g, 1.0, -0.5)
    assert g.grad is None
    assert gk.ops.norm_penalty(g, 1.0, 0.0)[0].item() == 0.0  # 0 is allowed: no penalty
