"""Worker for tests/test_distributed.py: GANTrainer.fit on the ring (hinge + R1 lazily every 2
steps, EMA) for a fixed number of steps with a global batch of 16, then a checkpoint from rank 0
and each rank's final state in OUT/state<rank>.pt. Launched with RANK/WORLD_SIZE/MASTER_* env."""

import os
import sys

import torch
import torch.distributed as dist

import gankern as gk
from gankern.train.models import MLPDiscriminator, MLPGenerator


def main(out_dir: str, steps: int) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(100 + rank)  # different per rank on purpose: the trainer must broadcast
    G, D = MLPGenerator(z_dim=4, hidden=16, layers=2), MLPDiscriminator(hidden=16, layers=2)
    trainer = gk.train.GANTrainer(G, D, loss="hinge", reg=gk.train.R1(gamma=1.0, every=2), ema=0.9,
                                  batch_size=16, seed=3)
    trainer.fit(gk.data.ring(), steps=steps, out_dir=os.path.join(out_dir, "run"), every=steps,
                progress=False)
    state = {"G": G.state_dict(), "D": D.state_dict(), "ema": trainer.ema.module.state_dict()}
    torch.save(state, os.path.join(out_dir, f"state{rank}.pt"))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
