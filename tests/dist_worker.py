"""Worker for tests/test_distributed.py, launched torchrun-style (RANK, WORLD_SIZE, MASTER_*).

One launch checks many cases in sequence, so the suite pays for process start-up once: each
case trains on this rank's shard of a global batch under a process group of N ranks and saves
its final state and per-step logs to OUT/<case>.w<N>.rank<r>.pt (4 ranks for the smoke case, then
2 for all); then rank 0 trains every case again as one process on the global batch
(OUT/<case>.single.pt), the reference the test compares against. Ranks seed their RNGs
differently on purpose: what makes them equal must be the trainer (DDP's broadcast), not luck.

Cases: GANTrainer with each regularizer kind (WGAN-GP, R1, R2, R1+R2, DRAGAN, lazy every=k),
SN on D, EMA, instance noise, d_l2, n_critic, unrolled D steps, in float64; bf16 autocast and
fp16 autocast with GradScaler in float32; a hand-written DistributedDataParallel loop with default
options (conv D, R1 through the wrapper, SGD), with micro-batches accumulated under no_sync and
with gk.spectral_norm; a NaN in one rank's batch.
"""

import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import gankern as gk
from gankern.train.distributed import shard, world
from gankern.train.models import MLPDiscriminator, MLPGenerator

STEPS = 4
BATCH = 8  # global

CASES = {
    # name: (default dtype, GANTrainer keyword arguments)
    "wgan-gp": (torch.float64, dict(loss="wgan", reg=gk.train.WGANGP(10.0), n_critic=2,
                                    instance_noise=0.1, ema=0.9)),
    "r1-sn": (torch.float64, dict(loss="hinge", reg=gk.train.R1(1.0), spectral_norm=True, ema=0.9)),
    "r2-lazy-sn": (torch.float64, dict(loss="ns", reg=gk.train.R2(1.0, every=2), spectral_norm=True,
                                       ema=0.8)),
    "dragan-lazy": (torch.float64, dict(loss="lsgan", reg=gk.train.DRAGAN(5.0, every=3), d_l2=1e-3,
                                        ema=None)),
    "r1r2-rsgan": (torch.float64, dict(loss="rsgan", reg=gk.train.R1R2(1.0), ema=0.9)),
    "hinge-unrolled": (torch.float64, dict(loss="hinge", reg=gk.train.R1(1.0), unrolled=2, ema=None)),
    "r1-bf16": (torch.float32, dict(loss="hinge", reg=gk.train.R1(1.0), amp="bf16", ema=0.9)),
    "r1-fp16": (torch.float32, dict(loss="hinge", reg=gk.train.R1(1.0), amp="fp16", ema=0.9)),
}
ALL_CASES = list(CASES) + ["manual-no-sync", "manual-sn"]
SMOKE_CASES = ("r1-sn",)


def train_case(kwargs) -> dict:
    torch.manual_seed(100 + world()[0])
    G = MLPGenerator(z_dim=4, hidden=16, layers=2)
    D = MLPDiscriminator(hidden=16, layers=2)
    trainer = gk.train.GANTrainer(G, D, batch_size=BATCH, seed=3, **kwargs)
    records = trainer.fit(gk.data.ring(), steps=STEPS, every=1, progress=False,
                          metrics_fn=lambda t: {})
    for r in records:
        r.pop("time_s")
    state = {"G": G.state_dict(), "D": D.state_dict(), "records": records}
    if trainer.ema is not None:
        state["ema"] = trainer.ema.module.state_dict()
    return state


def train_manual(sn: bool) -> dict:
    """A user's own DDP loop (default DDP options: buffers broadcast before every forward): one
    forward over real and fake per micro-batch, R1 through the DDP wrapper on every other step.
    Without SN: two micro-batches per step, no_sync on the first. With SN (gk.spectral_norm, u/v
    registered from each rank's own seed): one batch per step, since the power iteration runs
    once per forward, so a sample's sigma depends on which micro-batch holds it and a 1-process
    split of the batch differs from a per-rank one."""
    torch.manual_seed(99 + world()[0])
    wrap = gk.spectral_norm if sn else (lambda m: m)
    D = nn.Sequential(wrap(nn.Conv2d(3, 8, 3, 2, 1)), nn.LeakyReLU(0.2), wrap(nn.Conv2d(8, 8, 3, 2, 1)),
                      nn.LeakyReLU(0.2), nn.Flatten(), wrap(nn.Linear(8 * 2 * 2, 1)))
    model = D
    if world()[1] > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(D)
    opt = torch.optim.SGD(D.parameters(), lr=1e-2, momentum=0.9)
    g = torch.Generator().manual_seed(7)
    for step in range(STEPS):
        real_all = torch.randn(BATCH, 3, 8, 8, generator=g)
        fake_all = torch.randn(BATCH, 3, 8, 8, generator=g) * 2
        n_micro = 1 if sn else 2
        micro = list(zip(shard(real_all).chunk(n_micro), shard(fake_all).chunk(n_micro)))
        opt.zero_grad(set_to_none=True)
        for i, (real, fake) in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or model is D else model.no_sync()
            with sync:
                real_out, fake_out = model(torch.cat([real, fake])).chunk(2)
                loss = torch.relu(1 - real_out).mean() + torch.relu(1 + fake_out).mean()
                if step % 2 == 0:
                    loss = loss + 2 * gk.gradient_penalty(model, real, kind="r1", weight=1.0)
                (loss / len(micro)).backward()
        opt.step()
    return {"D": {k: v.detach().clone() for k, v in D.state_dict().items()}}


def diverge_on_one_rank(out_dir):
    """A NaN in rank 1's batch alone: every rank must stop at that step (none may go on into the
    next collective). Writes what each rank saw to OUT/diverge.rank<r>.txt."""
    torch.set_default_dtype(torch.float32)
    rank = world()[0]
    trainer = gk.train.GANTrainer(MLPGenerator(z_dim=4, hidden=8, layers=1),
                                  MLPDiscriminator(hidden=8, layers=1), reg=gk.train.R1(1.0))
    real = gk.data.ring().sample(4, generator=torch.Generator().manual_seed(rank))
    if rank == 1:
        real[0, 0] = float("nan")
    try:
        trainer.step(real)
        seen = "stepped"
    except gk.train.TrainingDiverged as e:
        seen = f"diverged at step {trainer.step_count}: {e}"
    with open(os.path.join(out_dir, f"diverge.rank{rank}.txt"), "w") as f:
        f.write(seen)


def run_all(names, out_dir, tag):
    for name in names:
        if name.startswith("manual"):
            torch.set_default_dtype(torch.float64)
            state = train_manual(sn=name == "manual-sn")
        else:
            dtype, kwargs = CASES[name]
            torch.set_default_dtype(dtype)
            state = train_case(kwargs)
        torch.save(state, os.path.join(out_dir, f"{name}.{tag}.pt"))


def main(out_dir: str, port2: str) -> None:
    """Started as WORLD_SIZE processes (4): the smoke cases on all of them, then every case on
    ranks 0 and 1 in a second process group of 2 (on port2), then every case on rank 0 alone."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = world()
    run_all(SMOKE_CASES, out_dir, f"w{size}.rank{rank}")
    dist.barrier()
    dist.destroy_process_group()
    if rank < 2:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port2}", rank=rank, world_size=2)
        run_all(ALL_CASES, out_dir, f"w2.rank{rank}")
        diverge_on_one_rank(out_dir)
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        run_all(ALL_CASES, out_dir, "single")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
