"""Checkpoints: a resumed run continues bit-identically to an uninterrupted one on the CPU, and
unreadable or foreign checkpoints give one clear error."""

import pytest
import torch

from gankern.data import ring
from gankern.train import R1, GANTrainer, WGANGP
from gankern.train.checkpoint import CheckpointError
from gankern.train.models import MLPDiscriminator, MLPGenerator

CONFIGS = {
    # every source of randomness the trainer owns: latents, instance noise, lazy R1, EMA, data
    "ns+r1-lazy+noise+ema": dict(loss="ns", reg=R1(1.0, every=2), instance_noise=0.1, ema=0.9,
                                 d_l2=1e-3),
    # random interpolation points drawn inside gk.gradient_penalty, n_critic, SN's u/v buffers
    "wgan-gp+n_critic+sn": dict(loss="wgan", reg=WGANGP(1.0), n_critic=2, spectral_norm=True, ema=0.5),
    # the demo's recipe: lazy R1 + SN + EMA, resumed in the middle of the learning-rate decay
    "ns+r1-lazy+sn+lr_decay": dict(loss="ns", reg=R1(0.1, every=4), spectral_norm=True, ema=0.9,
                                   lr_decay=(3, 8, 0.1)),
}


def build(cfg):
    torch.manual_seed(0)
    return GANTrainer(MLPGenerator(3, (2,), 8, 2), MLPDiscriminator((2,), 8, 2), batch_size=8,
                      seed=7, **cfg)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    for key in ("G", "D", "ema"):
        assert sa[key].keys() == sb[key].keys()
        for k in sa[key]:
            if isinstance(sa[key][k], torch.Tensor):
                assert torch.equal(sa[key][k], sb[key][k]), f"{key}.{k} differs"
    for key in ("g_opt", "d_opt"):
        for pid, st in sa[key]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, sb[key]["state"][pid][k]), f"{key} {pid} {k} differs"
    assert torch.equal(sa["rng"]["generators"]["gen"], sb["rng"]["generators"]["gen"])
    assert torch.equal(sa["rng"]["generators"]["data_gen"], sb["rng"]["generators"]["data_gen"])
    assert sa["step"] == sb["step"] and sa["g_steps"] == sb["g_steps"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_is_bit_identical(tmp_path, name):
    cfg = CONFIGS[name]
    whole = build(cfg)
    whole.fit(ring(), 10, progress=False)
    first = build(cfg)
    first.fit(ring(), 5, progress=False)
    first.save(tmp_path / "ck.pt")
    torch.manual_seed(123)  # resuming must not depend on the global RNG of the new process
    resumed = GANTrainer.load(tmp_path / "ck.pt")
    assert resumed.step_count == 5
    resumed.fit(ring(), 10, progress=False)
    assert_same_state(whole, resumed)
    assert torch.equal(whole.sample(16), resumed.sample(16))


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    t = build(CONFIGS["ns+r1-lazy+noise+ema"])
    path = tmp_path / "ck.pt"
    path.write_bytes(b"old")
    t.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    assert GANTrainer.load(path).step_count == 0


def test_load_with_explicit_models(tmp_path):
    t = build(CONFIGS["ns+r1-lazy+noise+ema"])
    t.fit(ring(), 2, progress=False)
    t.G.gankern_spec = None  # as if G were a user's own module
    t.save(tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match="custom models: pass G= and D="):
        GANTrainer.load(tmp_path / "ck.pt")
    again = GANTrainer.load(tmp_path / "ck.pt", G=MLPGenerator(3, (2,), 8, 2), D=MLPDiscriminator((2,), 8, 2))
    assert again.step_count == 2
    with pytest.raises(CheckpointError, match="does not match the models"):
        GANTrainer.load(tmp_path / "ck.pt", G=MLPGenerator(3, (2,), 16, 2), D=MLPDiscriminator((2,), 8, 2))


def test_unreadable_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        GANTrainer.load(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a gankern checkpoint \\(not a torch.save file"):
        GANTrainer.load(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="is not a gankern GANTrainer checkpoint"):
        GANTrainer.load(foreign)
    assert issubclass(CheckpointError, ValueError)


def test_adam_is_fused_on_the_cpu_and_a_loop_adam_checkpoint_resumes_fused(tmp_path):
    """GANTrainer's Adam runs torch's fused kernel where it has one (gankern/train/trainer.py
    _adam); a checkpoint written by a loop Adam (an older gankern, or a device without the
    kernel) resumes with the fused kernel and the saved moments, continuing as the saved run's
    own optimizer would to rounding."""
    t = build(CONFIGS["ns+r1-lazy+noise+ema"])
    assert all(opt.defaults["fused"] is True for opt in (t.g_opt, t.d_opt))
    t.fit(ring(), 3, progress=False)
    ck = t.state_dict()
    for key in ("g_opt", "d_opt"):
        for group in ck[key]["param_groups"]:
            group["fused"] = None
    torch.save(ck, tmp_path / "ck.pt")
    resumed = GANTrainer.load(tmp_path / "ck.pt")
    assert all(g["fused"] is True for opt in (resumed.g_opt, resumed.d_opt) for g in opt.param_groups)
    for a, b in zip(t.g_opt.state_dict()["state"].values(), resumed.g_opt.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    loop = build(CONFIGS["ns+r1-lazy+noise+ema"])
    loop.load_state_dict(ck)
    for opt in (loop.g_opt, loop.d_opt):
        for group in opt.param_groups:
            group["fused"] = None  # the loop kernel, as the checkpoint's writer ran it
    resumed.fit(ring(), 6, progress=False)
    loop.fit(ring(), 6, progress=False)
    for p, q in zip(resumed.G.parameters(), loop.G.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
