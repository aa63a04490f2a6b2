"""Worker for tests/test_distributed.py: one D step (hinge loss + R1 with its double backward)
on this rank's shard of a fixed global batch, gradients all-reduced, then an optimizer step.
Writes D's parameters to OUT/rank<r>.pt. Run by torchrun-style env (RANK, WORLD_SIZE, ...)."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import gankern as gk
from gankern.train.distributed import all_reduce_grads_, broadcast_, shard


def main(out_dir: str, steps: int) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(1234 + rank)  # different on purpose: broadcast_ must make D equal
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    broadcast_(D)
    # SGD, not Adam: Adam's first steps move by lr*sign(g), so a near-zero gradient component
    # turns float rounding differences into whole steps and hides what this test checks.
    opt = torch.optim.SGD(D.parameters(), lr=1e-2, momentum=0.9)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        real_all = torch.randn(8, 2, generator=g)
        fake_all = torch.randn(8, 2, generator=g) * 2
        real, fake = shard(real_all), shard(fake_all)
        loss = torch.relu(1 - D(real)).mean() + torch.relu(1 + D(fake)).mean()
        loss = loss + gk.gradient_penalty(D, real, kind="r1", weight=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_grads_(D.parameters())
        opt.step()
    torch.save({k: v.detach().clone() for k, v in D.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
