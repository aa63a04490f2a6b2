"""Worker for tests/test_distributed.py: a spectrally normalized D (gk.spectral_norm) trained
under torch's DistributedDataParallel. Each rank registers SN from a different RNG state on
purpose: DDP must broadcast rank 0's weights and u/v buffers, so every rank ends equal to a
one-process run over the global batch. Writes D's state_dict to OUT/rank<r>.pt."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gankern as gk
from gankern.train.distributed import shard


def main(out_dir: str, steps: int) -> None:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(99 + rank)
    D = nn.Sequential(gk.spectral_norm(nn.Conv2d(3, 8, 3, 2, 1)), nn.LeakyReLU(0.2),
                      gk.spectral_norm(nn.Conv2d(8, 8, 3, 2, 1)), nn.LeakyReLU(0.2), nn.Flatten(),
                      gk.spectral_norm(nn.Linear(8 * 2 * 2, 1)))
    model = DistributedDataParallel(D) if distributed else D
    opt = torch.optim.SGD(D.parameters(), lr=1e-2, momentum=0.9)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        real_all = torch.randn(8, 3, 8, 8, generator=g)
        fake_all = torch.randn(8, 3, 8, 8, generator=g) * 2
        # One forward over real and fake together: DDP expects one forward per backward.
        out = model(torch.cat([shard(real_all), shard(fake_all)]))
        real_out, fake_out = out.chunk(2)
        loss = torch.relu(1 - real_out).mean() + torch.relu(1 + fake_out).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.save({k: v.detach().clone() for k, v in D.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
