"""Regularizers against their formulas (on Ds whose input gradients are known in closed form),
lazy regularization with StyleGAN2's correction, L2 on D, annealed instance noise."""

import pytest
import torch
from torch import nn

from gankern.train import DRAGAN, GANQP, R1, R2, WGANGP, GANTrainer, InstanceNoise, d_loss, l2_penalty
from gankern.train.models import MLPDiscriminator, MLPGenerator
from gankern.train.lazy import lazy_optimizer_args
from gankern.train.regularizers import as_list, from_config, lazy_interval

torch.set_default_dtype(torch.float32)


class QuadD(nn.Module):
    """D(x) = sum(c * x^2): grad = 2 c x, so per-sample norms are known exactly."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c), dtype=torch.float64))

    def forward(self, x):
        return (self.c * x.pow(2)).flatten(1).sum(1)


class LinD(nn.Module):
    """D(x) = x . w: grad = w at every point, so interpolation randomness cannot matter."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w


def _xs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(5, 3, generator=g, dtype=torch.float64),
            torch.randn(5, 3, generator=g, dtype=torch.float64))


def test_r1_and_r2_match_formula():
    real, fake = _xs()
    D = QuadD(0.7)
    norms = lambda x: (2 * 0.7 * x).norm(dim=1)  # noqa: E731
    torch.testing.assert_close(R1(gamma=3.0).penalty(D, real, fake), 1.5 * norms(real).pow(2).mean())
    torch.testing.assert_close(R2(gamma=3.0).penalty(D, real, fake), 1.5 * norms(fake).pow(2).mean())


@pytest.mark.parametrize("cls", [WGANGP, DRAGAN])
@pytest.mark.parametrize("center", [None, 0.0, 2.0])
def test_one_and_zero_centered_penalties_match_formula(cls, center):
    real, fake = _xs(1)
    w = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    c = 1.0 if center is None else center
    pen = cls(weight=4.0, center=center).penalty(LinD(w), real, fake, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pen, 4.0 * (w.norm() - c) ** 2)


def test_penalty_gradient_reaches_d():
    real, fake = _xs(2)
    D = QuadD(0.5)
    R1(gamma=2.0).penalty(D, real, fake).backward()
    # d/dc of (gamma/2) mean(||2 c x||^2) = gamma * 4 c mean(||x||^2)
    torch.testing.assert_close(D.c.grad, 2.0 * 4 * 0.5 * real.pow(2).sum(1).mean())


def test_ganqp_regularizer_turns_wgan_into_gan_qp():
    r, f = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    xr, xf = _xs(3)
    reg = GANQP(qp_lambda=2.5)
    torch.testing.assert_close(d_loss("wgan", r, f) + reg.penalty_from_scores(r, f, xr, xf),
                               d_loss("gan-qp", r, f, xr, xf, qp_lambda=2.5))


def test_lazy_correction_is_stylegan2s():
    lr, betas = lazy_optimizer_args(2e-3, (0.0, 0.99), 16)
    c = 16 / 17
    assert lr == pytest.approx(2e-3 * c) and betas == pytest.approx((0.0, 0.99 ** c))
    assert lazy_optimizer_args(2e-3, (0.5, 0.9), 1) == (2e-3, (0.5, 0.9))
    with pytest.raises(ValueError, match="share one interval"):
        lazy_interval([R1(every=4), R2(every=8)])


def test_trainer_applies_lazy_regularizer_every_k_steps_with_correction():
    torch.manual_seed(0)
    G, D = MLPGenerator(2, (2,), 8, 1), MLPDiscriminator((2,), 8, 1)
    t = GANTrainer(G, D, loss="ns", reg=R1(1.0, every=3), d_lr=1e-3, betas=(0.5, 0.99), ema=None, batch_size=4)
    group = t.d_opt.param_groups[0]
    assert group["lr"] == pytest.approx(1e-3 * 0.75) and group["betas"][1] == pytest.approx(0.99 ** 0.75)
    assert t.g_opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    x = torch.randn(4, 2)
    has_reg = ["reg" in t.step(x) for _ in range(7)]
    assert has_reg == [True, False, False, True, False, False, True]


def test_l2_penalty_and_instance_noise():
    D = MLPDiscriminator((2,), 4, 1)
    want = sum(p.detach().pow(2).sum() for p in D.parameters())
    torch.testing.assert_close(l2_penalty(D), want)
    noise = InstanceNoise(0.5, anneal_steps=100)
    assert [noise.sigma_at(s) for s in (0, 50, 100, 200)] == [0.5, 0.25, 0.0, 0.0]
    x = torch.zeros(20000, 2)
    out = noise(x, 50, torch.Generator().manual_seed(0))
    assert abs(float(out.std()) - 0.25) < 0.01 and torch.equal(noise(x, 100), x)


def test_regularizer_configs_round_trip_and_bad_values():
    for reg in (R1(2.0, every=4), R2(), WGANGP(5.0, center=0.0), DRAGAN(), GANQP(3.0)):
        again = from_config(reg.config())
        assert type(again) is type(reg) and again.config() == reg.config()
    assert [type(r) for r in as_list("r1")] == [R1] and as_list("none") == []
    with pytest.raises(ValueError, match="reg must be one of"):
        as_list("r3")
    with pytest.raises(TypeError, match="reg must be a gk.train regularizer"):
        as_list(object())
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        R1(every=0)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        WGANGP(weight=-1.0)
    with pytest.raises(ValueError, match="instance_noise"):
        InstanceNoise(-0.1)
