#!/usr/bin/env python
"""Where a fused CPU path starts to win: fused vs plain PyTorch across sizes, side by side.

    python scripts/crossover.py bias_act [--threads 1] [--rounds 15]

The `auto` thresholds of the ops cite this script's output (gankern/ops/bias_act/__init__.py:
PLAIN_CPU_MAX_NUMEL). Each size times fwd+bwd of both paths interleaved, in thread CPU time
(time.thread_time: a busy machine preempts a thread without charging it), and prints the median
of plain time / fused time: above 1 the fused path wins.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BIAS_ACT_SHAPES = ((16, 256), (16, 512), (64, 512), (16, 64, 8, 8), (16, 128, 8, 8), (8, 64, 16, 16),
                   (16, 64, 16, 16), (8, 128, 16, 16), (16, 128, 16, 16))


def bias_act_cases():
    from gankern.ops.bias_act import bias_act

    for shape in BIAS_ACT_SHAPES:
        x0, b0, dy = torch.randn(shape), torch.randn(shape[1]), torch.randn(shape)
        view = (1, -1) + (1,) * (len(shape) - 2)

        def step(fn, x0=x0, b0=b0, dy=dy):
            x, b = x0.detach().requires_grad_(True), b0.detach().requires_grad_(True)
            torch.autograd.grad(fn(x, b), (x, b), dy)

        plain = (lambda s=step, v=view: s(lambda x, b: F.leaky_relu(x + b.view(v), 0.2)))
        fused = (lambda s=step: s(lambda x, b: bias_act(x, b, "lrelu", 0.2, impl="cpu")))
        yield shape, x0.numel(), plain, fused


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("op", choices=("bias_act",))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for shape, numel, plain, fused in bias_act_cases():
        inner = max(1, int(1e6 // numel))
        times = {"plain": [], "fused": []}
        for _ in range(args.rounds):
            for label, fn in (("plain", plain), ("fused", fused)):
                t0 = time.thread_time()
                for _ in range(inner):
                    fn()
                times[label].append((time.thread_time() - t0) / inner)
        p, f = statistics.median(times["plain"]), statistics.median(times["fused"])
        print(f"{str(shape):20s} {numel:8d} elements  plain {p * 1e6:8.1f} us  fused {f * 1e6:8.1f} us  "
              f"plain/fused {p / f:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
