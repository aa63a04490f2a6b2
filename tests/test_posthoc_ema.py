"""gk.PostHocEMA: power-function EMA profiles and their post-hoc synthesis (Karras et al. 2024,
"EDM2"), checked against the paper's formulas written out here in float64, independently of
gankern/nn/power_ema.py:

- sigma_rel of exponent gamma: sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3));
- profile of a snapshot at t: p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t]; tracked
  with beta_t = (1 - 1/t)^(gamma + 1), iterate tau (1..t) gets exactly the integral of p over
  [tau - 1, tau];
- synthesis: x solves min ||sum_i x_i p_i - p_r||_2 (normal equations with <p_i, p_j> integrals),
  and the synthesized weights are sum_i x_i theta_hat_i.
"""

import argparse
import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

import gankern as gk
from gankern.nn import posthoc_ema as posthoc_module
from gankern.nn import posthoc_ema_cli


# Tiny tensors: two threads per op only add wake-ups on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def paper_sigma_rel(gamma):
    return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def paper_dot(t_a, g_a, t_b, g_b):
    """The integral over [0, min(t_a, t_b)] of p_a * p_b, straight from the definition."""
    m = min(t_a, t_b)
    return ((g_a + 1) * (g_b + 1) * m ** (g_a + g_b + 1)
            / ((g_a + g_b + 1) * t_a ** (g_a + 1) * t_b ** (g_b + 1)))


def paper_iterate_weights(t, gamma):
    """Weight of iterates 1..t: the integral of p over [tau - 1, tau]."""
    tau = np.arange(1, t + 1, dtype=np.float64)
    return (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)


def make_model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 9), nn.BatchNorm1d(9), nn.Tanh(), nn.Linear(9, 2)).to(dtype)


def train_step_(model, step):
    """Drifting, noisy weights (a trend for the long EMAs, noise for the short ones)."""
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1 + 0.02).to(p.dtype))
        model(torch.randn(6, 3, generator=g, dtype=torch.float64).to(next(model.parameters()).dtype))


def run(ph_list, model, steps, history=None, start=0):
    for k in range(start, start + steps):
        train_step_(model, k)
        if history is not None:
            history.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
        for ph in ph_list:
            ph.update()


def test_gamma_from_sigma_rel_matches_the_paper():
    from gankern.nn.power_ema import sigma_rel_to_gamma

    # EDM2, section 3.1: sigma_rel 0.05 and 0.10 correspond to gamma 16.97 and 6.94.
    assert abs(sigma_rel_to_gamma(0.05) - 16.97) < 5e-3
    assert abs(sigma_rel_to_gamma(0.10) - 6.94) < 5e-3
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert abs(paper_sigma_rel(sigma_rel_to_gamma(s)) - s) < 1e-12
    ph = gk.PostHocEMA(make_model(), sigma_rels=(0.05, 0.10))
    assert ph.gammas == (sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10))
    for bad, exc, needle in [((0.3,), ValueError, "sigma_rels[0]"), ((0.05, 0.05), ValueError, "distinct"),
                             ((), ValueError, "1 to 8"), (0.05, ValueError, "tuple")]:
        with pytest.raises(exc, match=needle.replace("[", r"\[").replace("]", r"\]")):
            gk.PostHocEMA(make_model(), sigma_rels=bad)
    with pytest.raises(ValueError, match="snapshot_every"):
        gk.PostHocEMA(make_model(), snapshot_every=0)


def test_profile_inner_products_match_the_integral():
    from gankern.nn.power_ema import profile_dot

    for t_a, g_a, t_b, g_b in [(100, 16.97, 300, 6.94), (300, 6.94, 100, 16.97), (50, 3.0, 50, 7.5), (1e6, 17.0, 2e5, 6.9)]:
        closed = paper_dot(t_a, g_a, t_b, g_b)
        m = min(t_a, t_b)  # independent check: midpoint rule over [0, m]
        tau = (np.arange(400_000) + 0.5) * (m / 400_000)
        quad = np.sum((g_a + 1) * tau ** g_a / t_a ** (g_a + 1) * (g_b + 1) * tau ** g_b / t_b ** (g_b + 1)) * m / 400_000
        assert abs(closed - quad) <= 1e-6 * closed
        assert abs(float(profile_dot(t_a, g_a, t_b, g_b)) - closed) <= 1e-12 * closed


def test_tracked_profiles_are_the_power_function_emas():
    model = make_model()
    ph = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10, 0.2), snapshot_every=1000)
    history = []
    run([ph], model, 150, history)
    for k, gamma in enumerate(ph.gammas):
        w = torch.from_numpy(paper_iterate_weights(150, gamma))
        for name, avg in ph.profiles[k].named_parameters():
            expected = sum(wi * h[name] for wi, h in zip(w, history))
            assert torch.allclose(avg, expected, rtol=1e-12, atol=1e-14), (k, name)
    # buffers are copied, as gk.EMA's default
    assert torch.equal(ph.profiles[0][1].running_mean, model[1].running_mean)


def _setup_synthesis(steps=240, every=20):
    model = make_model()
    ph = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=every)
    history = []
    run([ph], model, steps, history)
    return model, ph, history


def test_synthesis_equals_the_paper_reconstruction_in_float64():
    model, ph, history = _setup_synthesis()
    target_sigma = 0.07
    g_r = float(np.roots([1, 7, 16 - target_sigma ** -2, 12 - target_sigma ** -2]).real.max())
    snaps = [(t, g) for t in range(20, 241, 20) for g in ph.gammas]
    A = np.array([[paper_dot(ta, ga, tb, gb) for tb, gb in snaps] for ta, ga in snaps])
    b = np.array([paper_dot(ta, ga, 240, g_r) for ta, ga in snaps])
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    # The synthesized weight of each iterate, and the synthesized parameters, from the definition.
    w = np.zeros(240)
    for xi, (t, g) in zip(x, snaps):
        w[:t] += xi * paper_iterate_weights(t, g)
    out = ph.synthesize(target_sigma, as_state_dict=True)
    for name in dict(model.named_parameters()):
        expected = sum(float(wi) * h[name] for wi, h in zip(w, history))
        # Both solve the same least-squares problem (cond(A) ~ 2e3 here) in float64: measured,
        # the coefficients agree to 2e-13 and the weights to 1e-14 relative; 1e-10 leaves room
        # for another LAPACK.
        scale = float(expected.abs().max())
        assert float((out[name] - expected).abs().max()) <= 1e-10 * scale, name
    assert torch.equal(out["1.running_var"], model[1].running_var)  # buffers: the last snapshot's


def test_synthesized_ema_equals_a_directly_tracked_power_ema_within_the_proven_bound():
    """syn - direct = sum_tau (w_syn,tau - w_r,tau) theta_tau exactly, so elementwise
    |syn - direct| <= ||w_syn - w_r||_1 * max_tau |theta_tau|: the tolerance is that bound,
    computed from the fitted coefficients, plus float64 rounding."""
    from gankern.nn.power_ema import discrete_weights, sigma_rel_to_gamma, solve_coefficients

    model = make_model()
    ph = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=20)
    direct = gk.PostHocEMA(model, sigma_rels=(0.07,), snapshot_every=10**6)
    history = []
    run([ph, direct], model, 240, history)
    snaps = [(t, g) for t in range(20, 241, 20) for g in ph.gammas]
    x = solve_coefficients([t for t, _ in snaps], [g for _, g in snaps], 240, sigma_rel_to_gamma(0.07))
    w_syn = np.zeros(240)
    for xi, (t, g) in zip(x, snaps):
        w_syn[:t] += xi * discrete_weights(t, g)
    l1 = float(np.abs(w_syn - discrete_weights(240, sigma_rel_to_gamma(0.07))).sum())
    assert l1 < 0.05  # the snapshots span the target well: a meaningful bound, not a vacuous one
    syn = ph.synthesize(0.07)
    for (name, s), (_, d) in zip(syn.named_parameters(), direct.profiles[0].named_parameters()):
        theta_max = torch.stack([h[name].abs() for h in history]).amax(0)
        bound = l1 * theta_max + 1e-12 * theta_max.max()
        assert ((s - d).abs() <= bound).all(), name
        assert float((s - d).abs().max()) > 0  # a synthesis, not a copy of the tracked profile


def test_state_dict_resume_is_bit_identical():
    model = make_model()
    ph = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=7)
    run([ph], model, 15)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(ph.state_dict())
    run([ph], model, 15, start=15)
    model2 = make_model()
    model2.load_state_dict(saved_model)
    ph2 = gk.PostHocEMA(model2, sigma_rels=(0.05, 0.10), snapshot_every=7)
    ph2.load_state_dict(saved)
    run([ph2], model2, 15, start=15)
    assert ph2.step == ph.step == 30 and len(ph2.snapshots) == len(ph.snapshots) == 4
    for (k, a), (_, b) in zip(ph.state_dict().items(), ph2.state_dict().items()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), k
    assert torch.equal(ph.synthesize(0.08, as_state_dict=True)["3.weight"],
                       ph2.synthesize(0.08, as_state_dict=True)["3.weight"])
    with pytest.raises(ValueError, match="sigma_rels"):
        gk.PostHocEMA(make_model(), sigma_rels=(0.05,)).load_state_dict(saved)


def test_bf16_model_gets_fp32_profiles_updated_like_separate_lerps():
    model = make_model(torch.bfloat16)
    fused = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=1000)
    plain = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=1000, impl="reference")
    run([fused, plain], model, 12)
    for pf, pp in zip(fused.profiles, plain.profiles):
        for (n, a), (_, b) in zip(pf.named_parameters(), pp.named_parameters()):
            assert a.dtype == torch.float32 and torch.equal(a, b), n


def test_snapshots_are_atomic_and_a_failed_write_keeps_earlier_ones(tmp_path, monkeypatch):
    model = make_model()
    ph = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=5, out_dir=tmp_path)
    run([ph], model, 5)
    first = tmp_path / "ema-snapshot-0000000005.pt"
    before = first.read_bytes()
    real_save = torch.save

    def disk_full(obj, f):
        real_save(obj, f)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(posthoc_module.torch, "save", disk_full)
    with pytest.raises(OSError, match="earlier snapshots are kept"):
        run([ph], model, 5, start=5)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ema-snapshot-0000000005.pt"]  # no torn or temporary file
    assert first.read_bytes() == before
    assert ph.synthesize(0.1, as_state_dict=True)["0.weight"].shape == (9, 3)


def test_only_rank_zero_writes_snapshots(tmp_path, monkeypatch):
    # Under torchrun every rank runs the same updates; rank 1 must leave the files to rank 0.
    model = make_model()
    ph = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=5, out_dir=tmp_path)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    run([ph], model, 5)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    run([ph], model, 5, start=5)
    assert os.listdir(tmp_path) == ["ema-snapshot-0000000010.pt"]


def _cli(argv):
    parser = argparse.ArgumentParser()
    posthoc_ema_cli.configure(parser)
    return posthoc_ema_cli.main(parser.parse_args(argv))


def test_cli_synthesizes_and_fails_in_one_line(tmp_path, capsys):
    model = make_model()
    ph = gk.PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=10, out_dir=tmp_path / "posthoc_ema")
    run([ph], model, 30)
    out = tmp_path / "syn.pt"
    assert _cli([str(tmp_path), "--sigma-rel", "0.07", "--out", str(out)]) == 0
    loaded = make_model()
    loaded.load_state_dict(torch.load(out, weights_only=True))  # strict: every key, right shapes
    expected = ph.synthesize(0.07, as_state_dict=True)
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    capsys.readouterr()
    for argv, needle in [([str(tmp_path / "missing"), "--sigma-rel", "0.07"], "is not a directory"),
                         ([str(tmp_path), "--sigma-rel", "0.5"], "--sigma-rel"),
                         ([str(tmp_path), "--sigma-rel", "0.07", "--step", "5"], "no EMA snapshot at or before step 5"),
                         ([str(out.parent / "posthoc_ema" / ".."), "--sigma-rel", "0.07", "--step", "0"], "--step")]:
        assert _cli(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli([str(empty), "--sigma-rel", "0.07"]) == 2
    assert "no ema-snapshot-*.pt" in capsys.readouterr().err
    from gankern.cli import main

    assert main(["ema-synthesize", str(tmp_path), "--sigma-rel", "0.1"]) == 0  # wired into `gankern`


def test_gan_trainer_takes_a_posthoc_ema_and_resumes_it(tmp_path):
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    ph = gk.PostHocEMA(G, sigma_rels=(0.05, 0.10), snapshot_every=4)
    trainer = gk.train.GANTrainer(G, D, ema=ph, batch_size=16)
    data = torch.randn(64, 2)
    trainer.fit(data, steps=8, progress=False)
    assert trainer.ema is ph and ph.step == 8 and len(ph.snapshots) == 2
    trainer.save(tmp_path / "ck.pt")
    back = gk.train.GANTrainer.load(tmp_path / "ck.pt")
    assert isinstance(back.ema, gk.PostHocEMA) and back.ema.step == 8 and len(back.ema.snapshots) == 2
    for a, b in zip(ph.profiles.parameters(), back.ema.profiles.parameters()):
        assert torch.equal(a, b)
    assert back.sample(4).shape == (4, 2)
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match="built on this G"):
        gk.train.GANTrainer(other, D, ema=ph)
