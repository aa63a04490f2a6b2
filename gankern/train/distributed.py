"""Data-parallel GAN training on torch.distributed: GANTrainer's steps shaped for
DistributedDataParallel, plus the rank-aware random draws that make N ranks compute what one
process computes on the global batch.

How a step meets DDP's reducer (it all-reduces a parameter's gradient, bucketed and overlapped
with the backward, when that parameter's AccumulateGrad fires; it expects that once per backward):
- D step: D(real), D(fake) and the penalty's D(x_hat) all run through the DDP wrapper and add
  into ONE loss with ONE backward. The penalty's autograd.grad(create_graph=True) is taken with
  respect to x_hat only, so it runs no AccumulateGrad and the reducer never sees it; the second
  backward through that graph is part of the step's one backward. Lazy regularization is folded
  into the same backward: on 1 step in k the loss has one more term, over the same parameters.
- G step: G runs through its wrapper; D is called unwrapped with its parameters frozen (a DDP
  forward whose parameters get no gradient leaves the reducer waiting for them).
- Forwards under no_grad (G in the D step, D(real) for relativistic G losses) use the raw module.
- Every backward is followed by an optimizer step, so nothing accumulates and no_sync is not
  needed; a loop that accumulates micro-batches wraps all but the last backward in no_sync().
DDP options: no buffer broadcast before each forward (forward_sync_buffers=False, in older torch
broadcast_buffers=False). The spectral-norm u/v buffers are updated by every training forward
from weights that are equal on every rank, so they stay bit-equal without communication (the
tests check ranks bit for bit); the default would broadcast them before each of the D step's
three forwards for nothing. It is not needed for correctness: a hand-written loop with the
default broadcast, SN and R1 through the wrapper also equals one process (to 1e-16, float64).
BatchNorm running statistics therefore stay per rank (rank 0's are checkpointed); batch
statistics are per rank under DDP either way (SyncBatchNorm takes CUDA tensors only).
find_unused_parameters=False: every parameter of D (of G) gets a gradient in every D (G) step.
static_graph stays off: it buys nothing here. Buffers are broadcast from rank 0 once, when the
trainer is built (wrap).
"""

from __future__ import annotations

import atexit
import inspect
import os

import torch
import torch.distributed as dist
from torch import nn

# Regularizer kinds whose penalty point is random (WGAN-GP's alpha, DRAGAN's alpha and noise).
RANDOM_PENALTY_KINDS = ("wgan-gp", "dragan")


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_buffers_(*modules: nn.Module, src: int = 0) -> None:
    """Make every rank's buffers (SN u/v, BatchNorm statistics) equal to rank src's."""
    if world()[1] == 1:
        return
    for module in modules:
        for t in module.buffers():
            dist.broadcast(t.data, src=src)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """module in DistributedDataParallel with the options above; module itself in one process.
    DDP broadcasts rank 0's parameters, and (forward_sync_buffers=False, torch >= 2.13) its
    buffers once at start-up; older torch spells it broadcast_buffers=False, which skips the
    start-up broadcast of buffers too, so it is done here."""
    if world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        buffers = {"forward_sync_buffers": False}
    else:
        broadcast_buffers_(module)
        buffers = {"broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False, **buffers)


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes must divide evenly)."""
    rank, size = world()
    if size == 1:
        return batch
    if batch.shape[0] % size:
        raise ValueError(f"batch of {batch.shape[0]} does not split evenly over {size} ranks")
    per = batch.shape[0] // size
    return batch[rank * per:(rank + 1) * per]


def global_draw(fn, local_shape, generator=None, dtype=None, device=None) -> torch.Tensor:
    """This rank's slice of fn(global shape) (fn: torch.rand or torch.randn). With the same
    generator state on every rank, N ranks together draw exactly what one process draws for the
    global batch, and no two ranks draw the same numbers. Drawn on the generator's device."""
    size = world()[1]
    shape = (local_shape[0] * size,) + tuple(local_shape[1:])
    gen_device = generator.device if generator is not None else device
    out = fn(shape, generator=generator, device=gen_device, dtype=dtype)
    return shard(out).to(device) if device is not None else shard(out)


def global_std(x: torch.Tensor) -> torch.Tensor:
    """torch.std (unbiased) over the elements of every rank's x together (equal shards)."""
    size = world()[1]
    if size == 1:
        return x.std()
    total = torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device)])
    dist.all_reduce(total)
    mean = total[0] / total[1]
    ss = (x - mean).pow(2).sum()
    dist.all_reduce(ss)
    return (ss / (total[1] - 1)).sqrt()


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a small tensor of per-rank values (one all-reduce). Means over
    equal shards are the global batch's means; a NaN/Inf on any rank reaches every rank, so all
    ranks stop on divergence together instead of one rank leaving the others in a collective."""
    size = world()[1]
    if size == 1:
        return values
    values = values.detach().to(torch.float64).clone()
    dist.all_reduce(values)
    return values / size


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x; dL/dx = sum over ranks of dL/dy (each rank's loss reaches every
    rank's x). Every rank runs the forward and the backward, in the same order."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def mean_over_ranks_differentiable(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of t, differentiable (unrolled D steps: each rank's inner gradient
    becomes the global batch's, and G's gradient flows back through every rank's share)."""
    size = world()[1]
    if size == 1:
        return t
    return _SumOverRanks.apply(t) / size


def any_rank(flag: bool) -> bool:
    """True on every rank when flag is True on any rank (e.g. a SIGTERM that reached one rank)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sharded_penalty(reg, D, real, fake, generator=None, scaler=None) -> torch.Tensor:
    """reg's WGAN-GP or DRAGAN penalty on this rank's slice, at the points one process would draw
    for the global batch: alpha (and DRAGAN's U(0,1) noise) are this rank's slice of the global
    draw, and DRAGAN's 0.5 * std(real) is over the global batch. DRAGAN's point
    x_hat = real + alpha * (x_p - real) is WGAN-GP's interpolate towards x_p, with the same
    weight * mean((n - c)^2), so both go through gradient_penalty(kind="wgan-gp", alpha=...)."""
    from .gradient_penalty import gradient_penalty

    if reg.kind not in RANDOM_PENALTY_KINDS:
        raise ValueError(f"sharded_penalty is for {RANDOM_PENALTY_KINDS}, got {reg.kind!r}")
    real = real.detach()
    per_sample = (real.shape[0],) + (1,) * (real.dim() - 1)
    # gradient_penalty's order of draws (alpha, then DRAGAN's noise): N ranks together draw the
    # numbers one process draws.
    alpha = global_draw(torch.rand, per_sample, generator, real.dtype, real.device)
    towards = fake
    if reg.kind == "dragan":
        noise = global_draw(torch.rand, real.shape, generator, real.dtype, real.device)
        towards = real + 0.5 * global_std(real) * noise
    return gradient_penalty(D, real, towards, kind="wgan-gp", weight=reg.weight, center=reg.center,
                            alpha=alpha, scaler=scaler, impl=reg.impl)


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment), with
    torch's default backends (gloo for CPU tensors, NCCL for CUDA tensors where built), each
    rank on cuda:LOCAL_RANK when CUDA is present; the group is destroyed at exit. Returns
    whether it initialized one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or world()[1] > 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group()
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return True
