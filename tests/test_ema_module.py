"""gk.EMA: GAN semantics (schedules, buffers, SN vectors, mixed precision, checkpoints, DDP)."""

import copy
import os

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import gankern as gk
from gankern.testing import assert_close_to_reference


def small_g(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 17), nn.BatchNorm1d(17), nn.LeakyReLU(0.2), nn.Linear(17, 3)).to(dtype)


def perturb_(model, step):
    """Stand-in for an optimizer step: deterministic, different each step."""
    g = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype), alpha=0.05)
        model(torch.randn(8, 5, generator=g).to(next(model.parameters()).dtype))  # moves BN stats


def test_schedules_match_their_formulas():
    s = gk.ema_schedules.stylegan(half_life_kimg=10.0, rampup=0.05, batch_size=32)
    for step in (0, 1, 10, 1000, 10**6):
        nimg = max(min(10.0 * 1000, step * 32 * 0.05), 1e-8)
        assert s(step) == 0.5 ** (32 / nimg)
    assert s(0) == 0.0  # the first update copies, as StyleGAN2-ADA does at cur_nimg = 0
    w = gk.ema_schedules.warmup(inv_gamma=1.0, power=2 / 3, min_decay=0.0, max_decay=0.9999)
    for step in (0, 1, 10, 10**4, 10**9):
        assert w(step) == min(max(1 - (1 + step) ** (-2 / 3), 0.0), 0.9999)
    with pytest.raises(ValueError, match="half_life_kimg"):
        gk.ema_schedules.stylegan(half_life_kimg=0)
    with pytest.raises(ValueError, match="max_decay"):
        gk.ema_schedules.warmup(min_decay=0.5, max_decay=0.4)


def test_reproduces_stylegan2_ada_ema_for_100_steps():
    G = small_g()
    G_ema_ref = copy.deepcopy(G).eval().requires_grad_(False)
    batch, ema_kimg, ema_rampup = 4, 0.2, 0.05
    ema = gk.EMA(G, decay=gk.ema_schedules.stylegan(ema_kimg, ema_rampup, batch))
    cur_nimg = 0
    for step in range(100):
        perturb_(G, step)
        # StyleGAN2-ADA training_loop.py, "Update G_ema":
        ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup)
        ema_beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema_ref.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, ema_beta))
            for b_ema, b in zip(G_ema_ref.buffers(), G.buffers()):
                b_ema.copy_(b)
        ema.update()
        cur_nimg += batch
        for (name, a), b in zip(ema.module.state_dict().items(), G_ema_ref.state_dict().values()):
            if a.is_floating_point():
                assert_close_to_reference(a, b.double(), torch.float32, name=f"step {step} {name}")
            else:
                assert torch.equal(a, b)


def test_buffers_copy_by_default_and_average_on_request():
    G = small_g()
    copied, averaged = gk.EMA(G, decay=0.9), gk.EMA(G, decay=0.9, buffers="average")
    for step in range(5):
        perturb_(G, step)
        copied.update()
        averaged.update()
    bn, bn_c, bn_a = G[1], copied.module[1], averaged.module[1]
    assert torch.equal(bn_c.running_mean, bn.running_mean) and torch.equal(bn_c.running_var, bn.running_var)
    assert torch.equal(bn_a.num_batches_tracked, bn.num_batches_tracked)  # integers are copied
    assert not torch.allclose(bn_a.running_mean, bn.running_mean)


def test_sn_vectors_stay_unit_vectors_after_1000_updates_with_average():
    torch.manual_seed(0)
    D = nn.Sequential(parametrizations.spectral_norm(nn.Linear(6, 9)), nn.ReLU(),
                      nn.utils.spectral_norm(nn.Linear(9, 1)))
    ema = gk.EMA(D, decay=0.99, buffers="average")
    opt = torch.optim.SGD(D.parameters(), lr=0.05)
    for step in range(1000):
        D.train()
        loss = D(torch.randn(4, 6)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
    sn_bufs = {n: b for n, b in ema.module.named_buffers() if n.endswith("_u") or n.endswith("_v")}
    assert len(sn_bufs) == 4  # parametrization _u/_v and legacy weight_u/weight_v
    for name, b in sn_bufs.items():
        assert abs(b.norm().item() - 1.0) < 1e-5, name
        assert torch.equal(b, dict(D.named_buffers())[name])


def test_bf16_model_gets_fp32_shadow_updated_in_one_pass():
    G = small_g(dtype=torch.bfloat16)
    ema = gk.EMA(G, decay=0.75)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())
    shadow64 = [p.double() for p in ema.module.parameters()]
    perturb_(G, 0)
    ema.update()
    for s, s64, p in zip(ema.module.parameters(), shadow64, G.parameters()):
        ref = s64 + 0.25 * (p.double() - s64)
        assert_close_to_reference(s, ref, torch.float32)
    kept = gk.EMA(G, shadow_dtype=None)
    assert all(p.dtype == torch.bfloat16 for p in kept.module.parameters())


def test_update_after_step_copies_and_update_every_skips():
    G = small_g()
    ema = gk.EMA(G, decay=0.5, update_after_step=3, update_every=2)
    for step in range(3):
        perturb_(G, step)
        ema.update()
        assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), G.parameters()))
    before = [p.clone() for p in ema.module.parameters()]
    perturb_(G, 3)
    ema.update()  # step 3: averaged
    assert all(not torch.equal(a, b) for a, b in zip(ema.module.parameters(), before))
    before = [p.clone() for p in ema.module.parameters()]
    perturb_(G, 4)
    ema.update()  # step 4: skipped
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), before))


def test_state_dict_round_trip_continues_bit_identically():
    G = small_g()
    ema = gk.EMA(G, decay=gk.ema_schedules.stylegan(0.1, 0.05, 8))
    for step in range(7):
        perturb_(G, step)
        ema.update()
    sd = copy.deepcopy(ema.state_dict())
    G2 = copy.deepcopy(G)
    restored = gk.EMA(G2, decay=gk.ema_schedules.stylegan(0.1, 0.05, 8))
    restored.load_state_dict(sd)
    assert restored.step == 7
    for step in range(7, 20):
        perturb_(G, step)
        perturb_(G2, step)
        ema.update()
        restored.update()
    for a, b in zip(ema.module.state_dict().values(), restored.module.state_dict().values()):
        assert torch.equal(a, b)


def test_copy_to_and_swapped():
    G = small_g()
    ema = gk.EMA(G, decay=0.5)
    perturb_(G, 0)
    ema.update()
    own = [p.clone() for p in G.parameters()]
    with ema.swapped(G) as swapped:
        assert all(torch.equal(a, b) for a, b in zip(swapped.parameters(), ema.module.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(G.parameters(), own))
    target = small_g(seed=5)
    ema.copy_to(target)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), ema.module.parameters()))


def test_deepcopy_and_eval_mode():
    ema = gk.EMA(small_g())
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    clone = copy.deepcopy(ema)
    x = torch.randn(3, 5)
    assert torch.equal(clone(x), ema(x))


def test_works_with_a_ddp_wrapped_model(tmp_path):
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path}/pg")
    try:
        G = small_g()
        ddp = nn.parallel.DistributedDataParallel(G)
        ema = gk.EMA(ddp, decay=0.5)
        assert set(ema.module.state_dict()) == set(G.state_dict())  # no "module." prefix
        perturb_(G, 0)
        ema.update()
        ema.update(ddp)
        assert ema.step == 2
    finally:
        dist.destroy_process_group()
