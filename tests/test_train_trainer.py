"""GANTrainer: a step for every loss on tiny models, n_critic, unrolled, AMP, SN, sampling, fit's
outputs, divergence and interruption handling, and bad configuration."""

import json
import os
import signal

import pytest
import torch
from torch import nn

from gankern.data import ring
from gankern.train import (LOSSES, R1, GANTrainer, TrainingDiverged, TrainingInterrupted, WGANGP)
from gankern.train.models import MLPDiscriminator, MLPGenerator


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    G, D = MLPGenerator(3, (2,), 8, 1), MLPDiscriminator((2,), 8, 1)
    kw.setdefault("batch_size", 8)
    return GANTrainer(G, D, **kw)


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def changed(before, m):
    return any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


REAL = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("loss", LOSSES)
def test_step_every_loss_updates_both_players_and_ema(loss):
    t = tiny(loss=loss, g_lr=1e-2, d_lr=1e-2, ema=0.5)
    g0, d0, e0 = params(t.G), params(t.D), params(t.ema.module)
    out = t.step(REAL)
    assert set(out) >= {"d_loss", "g_loss", "d_grad_norm", "g_grad_norm", "d_real", "d_fake", "step"}
    assert all(isinstance(v, (int, float)) and v == v for v in out.values())
    assert changed(g0, t.G) and changed(d0, t.D) and changed(e0, t.ema.module)
    assert out["d_grad_norm"] > 0 and out["g_grad_norm"] > 0


def test_n_critic_updates_g_every_kth_step():
    t = tiny(loss="wgan", reg=WGANGP(), n_critic=3, ema=None)
    g0 = params(t.G)
    outs = [t.step(REAL) for _ in range(2)]
    assert all("g_loss" not in o for o in outs) and not changed(g0, t.G)
    assert "g_loss" in t.step(REAL) and changed(g0, t.G) and t.g_steps == 1 and t.step_count == 3


def _g_grad(t):
    t.g_opt.zero_grad()
    t.step_count = 0
    t._g_step(t._check_real(REAL))
    return [p.detach().clone() for p in t.G.parameters()]


def test_unrolled_changes_the_generator_update():
    plain = tiny(loss="ns", ema=None, g_lr=1e-2)
    unrolled = tiny(loss="ns", ema=None, g_lr=1e-2, unrolled=3, d_lr=0.5)
    # Same models and seeds: only the unrolled D differs, so G's update must differ.
    after_plain, after_unrolled = _g_grad(plain), _g_grad(unrolled)
    assert any(not torch.equal(a, b) for a, b in zip(after_plain, after_unrolled))
    assert all(torch.isfinite(p).all() for p in after_unrolled)
    # And D itself is untouched by the unrolled look-ahead.
    ref = tiny(loss="ns", ema=None)
    assert all(torch.equal(a, b) for a, b in zip(ref.D.parameters(), unrolled.D.parameters()))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_steps_are_finite(amp):
    t = tiny(loss="ns", reg=R1(1.0), amp=amp, ema=0.9)
    for _ in range(3):
        out = t.step(REAL)
    assert out["d_loss"] == out["d_loss"] and out["g_loss"] == out["g_loss"]
    assert t.state_is_finite()
    assert (t.d_scaler is not None) == (amp == "fp16")


def test_lr_decay_anneals_both_learning_rates_linearly():
    # D's lr carries the lazy-R1 correction c = k/(k+1); the decay multiplies both.
    t = tiny(loss="ns", reg=R1(1.0, every=4), g_lr=1e-2, d_lr=2e-2, ema=None, lr_decay=(2, 6, 0.1))
    expected = [1.0, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1]  # factor used by steps 0..7
    for factor in expected:
        t.step(REAL)
        assert t.g_opt.param_groups[0]["lr"] == pytest.approx(1e-2 * factor, rel=1e-12)
        assert t.d_opt.param_groups[0]["lr"] == pytest.approx(2e-2 * 0.8 * factor, rel=1e-12)
    assert t.config()["lr_decay"] == [2, 6, 0.1]
    assert tiny(loss="ns").lr_factor(10**6) == 1.0


def test_spectral_norm_is_applied_to_d():
    t = tiny(loss="hinge", spectral_norm=True, ema=None)
    linears = [m for m in t.D.modules() if isinstance(m, nn.Linear)]
    assert linears and all(hasattr(m, "parametrizations") for m in linears)
    t.step(REAL)
    for m in linears:  # SN keeps the largest singular value of every weight at 1
        sigma = torch.linalg.matrix_norm(m.weight.detach(), ord=2)
        assert abs(float(sigma) - 1.0) < 0.1


def test_spectral_norm_is_grouped_and_steps_as_per_layer(monkeypatch):
    # GANTrainer groups D's SN (one autograd node per D call); a trainer whose D has the
    # grouping hooks removed runs per layer: the same steps, bit for bit.
    from gankern.ops import spectral_norm as sn_ops

    grouped, per_layer = (tiny(loss="hinge", spectral_norm=True, ema=None) for _ in range(2))
    per_layer.D._forward_pre_hooks.clear()
    per_layer.D._forward_hooks.clear()
    calls = []
    real_grouped = sn_ops.grouped_train_forward
    monkeypatch.setattr(sn_ops, "grouped_train_forward", lambda *a: calls.append(1) or real_grouped(*a))
    for _ in range(3):
        grouped.step(REAL)
    assert calls, "the trainer's D never ran the grouped node"
    n = len(calls)
    for _ in range(3):
        per_layer.step(REAL)
    assert len(calls) == n
    for a, b in zip(grouped.D.state_dict().values(), per_layer.D.state_dict().values()):
        assert torch.equal(a, b)


def test_d_l2_and_instance_noise_change_the_d_step():
    base = tiny(loss="ns", ema=None).step(REAL)["d_loss"]
    noisy = tiny(loss="ns", ema=None, instance_noise=1.0).step(REAL)["d_loss"]
    assert noisy != base
    a, b = tiny(loss="ns", ema=None), tiny(loss="ns", ema=None, d_l2=10.0)
    a.step(REAL)
    b.step(REAL)
    assert sum(p.pow(2).sum() for p in b.D.parameters()) < sum(p.pow(2).sum() for p in a.D.parameters())


def test_sample_uses_ema_and_is_reproducible():
    t = tiny(loss="ns", ema=0.5)
    t.step(REAL)
    assert t.sample(5).shape == (5, 2)
    assert torch.equal(t.sample(5, seed=3), t.sample(5, seed=3))
    assert not torch.equal(t.sample(5, ema=True), t.sample(5, ema=False))
    state = t.gen.get_state()
    t.sample(100)
    assert torch.equal(state, t.gen.get_state())  # sampling never moves training randomness


def test_nan_loss_stops_before_the_update():
    t = tiny(loss="ns", ema=None)
    g0, d0 = params(t.G), params(t.D)
    bad = REAL.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="the D loss is nan at step 0"):
        t.step(bad)
    assert all(torch.equal(a, b) for a, b in zip(g0, t.G.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(d0, t.D.parameters()))


class NaNAfter:
    """Ring samples that turn NaN after `good` batches: a run that diverges mid-way."""

    centers, std, shape = ring().centers, ring().std, (2,)

    def __init__(self, good):
        self.good, self.calls = good, 0

    def sample(self, n, generator=None):
        self.calls += 1
        x = ring().sample(n, generator)
        return x if self.calls <= self.good or n != 8 else x * float("nan")


def test_fit_keeps_last_good_checkpoint_on_divergence(tmp_path):
    t = tiny(loss="ns", ema=0.9)
    with pytest.raises(TrainingDiverged, match="last good checkpoint .* was kept"):
        t.fit(NaNAfter(good=5), 10, out_dir=str(tmp_path), every=2, progress=False)
    ck = GANTrainer.load(tmp_path / "checkpoint.pt")
    assert ck.step_count == 4 and ck.state_is_finite()
    with torch.no_grad():
        t.G.net[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="not saving"):
        t.save(tmp_path / "checkpoint.pt")
    assert GANTrainer.load(tmp_path / "checkpoint.pt").step_count == 4


class SignalAt:
    """Sends a signal to this process while serving batch `at` (as Ctrl-C or `kill` would)."""

    def __init__(self, at, signum):
        self.at, self.signum, self.calls = at, signum, 0

    def sample(self, n, generator=None):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return ring().sample(n, generator)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_and_writes_a_checkpoint(tmp_path, signum):
    t = tiny(loss="ns", ema=0.9)
    with pytest.raises(TrainingInterrupted, match="checkpoint written") as info:
        t.fit(SignalAt(3, signum), 50, out_dir=str(tmp_path), every=100, progress=False)
    assert info.value.signum == signum
    assert GANTrainer.load(tmp_path / "checkpoint.pt").step_count == 3 == t.step_count
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_fit_writes_pictures_metrics_and_checkpoint(tmp_path):
    t = tiny(loss="hinge", reg=R1(0.1, every=2), ema=0.9)
    records = t.fit(ring(), 6, out_dir=str(tmp_path), every=3, progress=False)
    assert [r["step"] for r in records] == [3, 6]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6]
    assert {"d_loss", "g_loss", "d_grad_norm", "modes", "hq", "ema_modes", "ema_hq"} <= set(lines[0])
    pngs = sorted(os.listdir(tmp_path / "samples"))
    assert pngs == ["step_0000003.png", "step_0000006.png"]
    assert (tmp_path / "samples" / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert GANTrainer.load(tmp_path / "checkpoint.pt").step_count == 6


def test_fit_image_tensor_writes_a_grid(tmp_path):
    torch.manual_seed(0)
    G, D = MLPGenerator(4, (1, 4, 4), 8, 1, tanh=True), MLPDiscriminator((1, 4, 4), 8, 1)
    t = GANTrainer(G, D, loss="ns", batch_size=4)
    t.fit(torch.rand(10, 1, 4, 4) * 2 - 1, 2, out_dir=str(tmp_path), every=2, progress=False)
    from PIL import Image

    with Image.open(tmp_path / "samples" / "step_0000002.png") as im:
        assert im.mode == "L" and im.size[0] > 4


class Bad(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.lin = nn.Linear(3, out)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss="minimax"), "loss must be one of"),
    (dict(g_lr=-1e-3), "g_lr must be a finite number > 0"),
    (dict(d_lr=float("nan")), "d_lr must be a finite number > 0"),
    (dict(betas=(0.9,)), "betas must be two numbers"),
    (dict(n_critic=0), "n_critic must be an int >= 1"),
    (dict(ema=1.5), "ema must be a decay"),
    (dict(amp="int8"), "amp must be"),
    (dict(reg="r3"), "reg must be one of"),
    (dict(unrolled=-1), "unrolled must be an int >= 0"),
    (dict(d_l2=-1.0), "d_l2 must be"),
    (dict(z_dim=0), "z_dim must be an int >= 1"),
    (dict(lr_decay=(5, 5, 0.1)), "lr_decay must be None or"),
    (dict(lr_decay=(0, 10, 0.0)), "lr_decay must be None or"),
    (dict(lr_decay=(0, 10)), "lr_decay must be None or"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_g_output_d_cannot_take():
    G = MLPGenerator(3, (3,), 8, 1)
    with pytest.raises(ValueError, match=r"D cannot take G's output of shape \(2, 3\)"):
        GANTrainer(G, MLPDiscriminator((2,), 8, 1))
    with pytest.raises(ValueError, match="D must return one score per sample"):
        GANTrainer(MLPGenerator(3, (3,), 8, 1), Bad(4), z_dim=3)
    with pytest.raises(TypeError, match="G must be an nn.Module"):
        GANTrainer(lambda z: z, MLPDiscriminator((2,), 8, 1))


def test_step_rejects_bad_batches_without_changing_anything():
    t = tiny(loss="ns", ema=None)
    d0 = params(t.D)
    with pytest.raises(ValueError, match=r"real must have shape \(B, 2\)"):
        t.step(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="real must be floating point"):
        t.step(torch.zeros(4, 2, dtype=torch.int64))
    assert all(torch.equal(a, b) for a, b in zip(d0, t.D.parameters())) and t.step_count == 0
