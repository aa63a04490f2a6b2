"""Issue 17 part 2: gk.gradient_penalty(kind="r1+r2") — R3GAN's R1 + R2 (Huang et al. 2024) from
ONE D forward over cat([real, fake]) and one double backward — equals R1 + R2 computed
separately in float64 on every backend; BatchNorm with batch statistics is refused (one forward
over the concatenated batch would mix real and fake statistics); gk.train.R1R2 is the trainer
regularizer, lazy with every=k, equal to [R1, R2] with the same interval.

R1 = (gamma/2) * mean_i ||dD(real_i)/dx||^2, R2 = (gamma/2) * mean_i ||dD(fake_i)/dx||^2
(Mescheder et al. 2018), written out below with plain autograd."""

import copy

import pytest
import torch
from conftest import backends_for
from torch import nn

import gankern as gk
from gankern.ops.norm_penalty import IMPLEMENTED
from gankern.train import R1, R1R2, R2, GANTrainer
from gankern.train.models import MLPDiscriminator, MLPGenerator
from gankern.train.regularizers import as_list, from_config

BACKENDS = ["reference"] + [b for b in backends_for(IMPLEMENTED) if b != "reference"]


def plain_r(D, x, gamma):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return gamma / 2 * g.reshape(g.shape[0], -1).pow(2).sum(1).mean()


def conv_d():
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, 2, 1),
                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 2 * 2, 1))


def mlp_d():
    return nn.Sequential(nn.Linear(5, 16), nn.SiLU(), nn.Linear(16, 1))


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("factory, shape", [(mlp_d, (7, 5)), (conv_d, (5, 3, 8, 8))])
def test_r1_plus_r2_in_one_pass_equals_the_two_penalties(impl, factory, shape):
    torch.manual_seed(0)
    D = factory().double()
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(shape, generator=gen, dtype=torch.float64)
    fake = torch.randn(shape, generator=gen, dtype=torch.float64)
    params = list(D.parameters())[:-1]  # the last bias does not change dD/dx
    got, norms = gk.gradient_penalty(D, real, fake, kind="r1+r2", weight=3.0, return_norms=True, impl=impl)
    got_grads = torch.autograd.grad(got, params)
    want = plain_r(D, real, 3.0) + plain_r(D, fake, 3.0)
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    sep = [gk.gradient_penalty(D, real, fake, kind=k, return_norms=True, impl=impl)[1] for k in ("r1", "r2")]
    torch.testing.assert_close(norms, torch.cat(sep), rtol=1e-12, atol=0)  # 2B norms, real first
    # The gk kinds agree too: r1 + r2 with the same weight.
    two = sum(gk.gradient_penalty(D, real, fake, kind=k, weight=3.0, impl=impl) for k in ("r1", "r2"))
    torch.testing.assert_close(got, two, rtol=1e-12, atol=0)


def test_one_forward_of_d():
    torch.manual_seed(0)
    D = mlp_d().double()
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return D(x)

    real, fake = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    gk.gradient_penalty(counted, real, fake, kind="r1+r2").backward()
    assert calls == [8]  # one forward over cat([real, fake])
    calls.clear()
    (gk.gradient_penalty(counted, real, kind="r1") + gk.gradient_penalty(counted, real, fake, kind="r2")).backward()
    assert calls == [4, 4]


def bn_d():
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).double()


def test_batchnorm_with_batch_statistics_is_refused_and_nothing_changes():
    torch.manual_seed(0)
    D = bn_d()
    state = copy.deepcopy(D.state_dict())
    real, fake = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"r1\+r2.*batch statistics.*1"):
        gk.gradient_penalty(D, real, fake, kind="r1+r2")
    for k, v in D.state_dict().items():  # running stats untouched: D never ran
        assert torch.equal(v, state[k]), k
    no_running = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Linear(8, 1))
    no_running.eval()  # without running statistics eval() still normalizes by the batch
    with pytest.raises(ValueError, match="batch statistics"):
        gk.gradient_penalty(no_running.double(), real, fake, kind="r1+r2")
    with pytest.raises(ValueError, match="fake"):
        gk.gradient_penalty(mlp_d(), torch.randn(4, 5), kind="r1+r2")


def test_batchnorm_in_eval_is_per_sample_and_allowed():
    torch.manual_seed(0)
    D = bn_d()
    D.train()
    D(torch.randn(64, 5, dtype=torch.float64))  # some running statistics
    D.eval()
    real, fake = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    got = gk.gradient_penalty(D, real, fake, kind="r1+r2", weight=2.0)
    torch.testing.assert_close(got, plain_r(D, real, 2.0) + plain_r(D, fake, 2.0), rtol=1e-12, atol=0)


def test_r1r2_regularizer_config_and_names():
    reg = R1R2(gamma=0.5, every=4)
    assert reg.kind == "r1+r2" and reg.gamma == 0.5 and reg.every == 4
    back = from_config(reg.config())
    assert isinstance(back, R1R2) and back.config() == reg.config()
    assert [type(r) for r in as_list("r1+r2")] == [R1R2] and [type(r) for r in as_list("r1r2")] == [R1R2]
    with pytest.raises(ValueError, match="gamma|weight"):
        R1R2(gamma=-1.0)


def _trainer(reg):
    torch.manual_seed(0)
    G, D = MLPGenerator(2, (2,), 16, 2), MLPDiscriminator((2,), 16, 2)  # the trainer runs float32
    return GANTrainer(G, D, loss="rsgan", reg=reg, d_lr=1e-3, g_lr=1e-3, ema=None, batch_size=8, seed=3)


def test_lazy_r1r2_in_a_trainer_equals_lazy_r1_and_r2():
    """Every 3rd D step, 3 * (R1 + R2), with StyleGAN2's optimizer correction: the same run as
    the two penalties R1(every=3) and R2(every=3), up to float32 rounding (the trainer's dtype;
    the float64 equality of the penalties themselves is tested above)."""
    one, two = _trainer(R1R2(gamma=2.0, every=3)), _trainer([R1(2.0, every=3), R2(2.0, every=3)])
    assert one.d_opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.75)
    gen = torch.Generator().manual_seed(5)
    for _ in range(7):
        x = torch.randn(8, 2, generator=gen)
        a, b = one.step(x), two.step(x)
        assert ("reg" in a) == ("reg" in b)
        if "reg" in a:
            assert a["reg"] == pytest.approx(b["reg"], rel=1e-5)
    for p, q in zip(list(one.D.parameters()) + list(one.G.parameters()),
                    list(two.D.parameters()) + list(two.G.parameters())):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_demo_recipe_r1r2_runs(tmp_path, capsys, monkeypatch):
    """`gankern demo --reg r1+r2`: the ring with rsgan loss + lazy R1R2 + SN + EMA (tiny run;
    the full recipe's quality is measured in the README)."""
    from gankern.cli import main

    seen = []
    fit = GANTrainer.fit
    monkeypatch.setattr(GANTrainer, "fit", lambda self, *a, **k: (seen.append(self), fit(self, *a, **k))[1])
    assert main(["demo", "--steps", "3", "--reg", "r1+r2", "--out", str(tmp_path / "d.png"), "--quiet"]) == 0
    assert "modes covered" in capsys.readouterr().out
    (t,) = seen
    assert t.loss == "rsgan" and isinstance(t.regs[0], R1R2) and t.regs[0].every > 1 and t.spectral_norm
    assert main(["demo", "--reg", "r1+r2", "--no-sn", "--steps", "3", "--quiet"]) == 2


@pytest.mark.parametrize("impl", BACKENDS)
def test_relativistic_d_step_from_one_forward(impl):
    """return_scores=True: R3GAN's D step (rsgan loss + R1 + R2) from the penalty's own forward
    over cat([real, fake]) has the loss and parameter gradients of the step written out with
    three forwards (loss, R1, R2) in float64."""
    torch.manual_seed(2)
    D = conv_d().double()
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    fake = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    params = list(D.parameters())
    gp, norms, scores = gk.gradient_penalty(D, real, fake, kind="r1+r2", weight=2.0, return_norms=True,
                                            return_scores=True, impl=impl)
    assert scores.shape == (8,) and norms.shape == (8,)
    got = torch.nn.functional.softplus(scores[4:] - scores[:4]).mean() + gp
    got_grads = torch.autograd.grad(got, params)
    want = (torch.nn.functional.softplus(D(fake).squeeze(1) - D(real).squeeze(1)).mean()
            + plain_r(D, real, 2.0) + plain_r(D, fake, 2.0))
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
