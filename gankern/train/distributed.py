"""Data-parallel GAN training on torch.distributed, StyleGAN2-style: all-reduce the gradients.

Why not DistributedDataParallel: DDP's reducer expects one backward per forward and fires its
hooks on AccumulateGrad. A D step with a gradient penalty runs D forward twice and takes a
double backward through torch.autograd.grad(create_graph=True), which trips DDP
("marked ready twice", unused parameters), and lazy regularization changes the graph from
step to step. Averaging the flat gradient once after each backward is
what StyleGAN2-ADA does; it is exact, handles any graph, and costs one all-reduce per optimizer
step. Launch with torchrun; every rank holds the same G, D and EMA, and sees a slice of the batch.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_(*modules: nn.Module, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank src's."""
    if world()[1] == 1:
        return
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def all_reduce_grads_(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks, in one all-reduce per dtype.

    Parameters without a gradient on this rank contribute zeros, so ranks that skipped a branch
    stay in step with the others (a collective must be entered by every rank with equal sizes).
    """
    rank, size = world()
    if size == 1:
        return
    params = [p for p in params if p.requires_grad]
    by_dtype: dict = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes must divide evenly)."""
    rank, size = world()
    if size == 1:
        return batch
    if batch.shape[0] % size:
        raise ValueError(f"batch of {batch.shape[0]} does not split evenly over {size} ranks")
    per = batch.shape[0] // size
    return batch[rank * per:(rank + 1) * per]
