#!/usr/bin/env python
"""Where a fused CPU path wins: fused vs plain PyTorch, side by side, for the ops' `auto` choices.

    python scripts/crossover.py bias_act [--threads 1] [--rounds 15]
    python scripts/crossover.py gp_dstep [--threads 1] [--rounds 15]
    python scripts/crossover.py sn_layers [--threads 1] [--rounds 15]
    python scripts/crossover.py sn_dstep [--threads 2] [--rounds 60] [--cold]
    python scripts/crossover.py sn_eval [--threads 1] [--rounds 15]
    python scripts/crossover.py sn_legacy [--threads 1] [--rounds 15]

bias_act: the op alone, fwd+bwd of bias + lrelu at growing sizes, plain (x + b, leaky_relu)
and fused; prints plain time / fused time (above 1 the fused path wins).
gp_dstep: a WGAN-GP D step (loss on real and fake + penalty, one backward) of the trainers'
MLP and DCGAN-32 critics at batch 16: the unfused D with the hand-written penalty, the unfused D
with gk.gradient_penalty, fuse_bias_act(D) with small layers (<= 128K elements) plain, and
fuse_bias_act(D) fused everywhere; prints each as unfused-hand time / its time.
sn_layers: one layer's SN training forward + backward (read the weight, backward a cotangent
into it) for the layer shapes of the bench's SN discriminators, gk.spectral_norm vs torch's
parametrization vs the plain layer; prints each SN's overhead over the plain layer and torch's
overhead / gankern's (csrc/cpu/spectral_norm.cpp cites it).
sn_dstep: the bench's SNGAN-ResNet-32 D step (batch 2, fwd + bwd) with no SN, with every weight
a copy of itself (the bench's per-layer floor, gankern/bench/floors.py: what any per-layer SN
costs the convolutions around it, with none of its math), with
gk.spectral_norm and with torch's; each overhead is the median of per-round differences from
the no-SN step, in wall time; --cold flushes the last-level cache before every call, as
`gankern bench` does.
sn_eval: one layer's SN in eval mode with grad enabled (read the weight, backward a cotangent:
sigma = u^T W v from the stored u, v, W / sigma and its backward), gankern's fused path
(impl="cpu") vs torch's parametrization, at growing weight sizes; prints torch / gankern
(gankern/nn/spectral_norm.py cites it for the size below which auto runs torch's math there).
sn_legacy: one conv layer's training forward + backward (batch 2, 8x8 input) under torch's
legacy hook (torch.nn.utils.spectral_norm) and after gk.convert_spectral_norm (which keeps the
hook's v-first order: the iterations as torch ops, sigma, W / sigma and the backward fused), at
growing weight sizes; prints torch / gankern (gankern/nn/spectral_norm.py cites it).
gankern/ops/bias_act/__init__.py cites bias_act, gankern/nn/bias_act.py gp_dstep. Paths run interleaved, timed in thread CPU time
(time.thread_time: a busy machine preempts a thread without charging it); medians.
"""

from __future__ import annotations

import argparse
import copy
import math
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


def gp_dstep_cases():
    import gankern as gk
    from gankern.bench.cases import trainers as T
    from gankern.nn import bias_act as nn_bias_act

    plain_below = 1 << 17

    def small_layers_plain(module, x):  # DeferredBiasAct.forward with a plain path below 128K
        if x.numel() < plain_below:
            dim = module.dim % x.dim()
            b = module.bias.view([-1 if i == dim else 1 for i in range(x.dim())])
            return F.leaky_relu(x + b, module.alpha if module.alpha is not None else 0.2)
        return nn_bias_act.BiasAct.forward(module, x)

    for name, build, shape in (("MLP critic", T.mlp_critic, (16, 1, 28, 28)),
                               ("DCGAN-32 critic", lambda: T.dcgan_critic32(32), (16, 3, 32, 32))):
        torch.manual_seed(0)
        unfused = build()
        # impl="cpu": under auto a CPU runs fused pairs unfused (the choice this mode measures).
        fused = gk.nn.fuse_bias_act(copy.deepcopy(unfused), impl="cpu")
        mixed = gk.nn.fuse_bias_act(copy.deepcopy(unfused), impl="cpu")
        for m in mixed.modules():
            if isinstance(m, nn_bias_act.DeferredBiasAct):
                m.forward = (lambda x, m=m: small_layers_plain(m, x))
        real, fake = torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1
        alpha = torch.rand(shape[0], 1, 1, 1)

        def step(D, penalty, real=real, fake=fake, alpha=alpha):
            D.zero_grad(set_to_none=True)
            (D(fake).mean() - D(real).mean() + penalty(D, real, fake, alpha)).backward()

        yield name, {"unfused D, hand-written GP": lambda s=step, d=unfused: s(d, T.hand_written_gp),
                     "unfused D, gk.gradient_penalty": lambda s=step, d=unfused: s(d, T.gankern_gp),
                     "fused, small layers plain": lambda s=step, d=mixed: s(d, T.gankern_gp),
                     "fused everywhere": lambda s=step, d=fused: s(d, T.gankern_gp)}


SN_LAYER_SHAPES = ((128, 3, 3, 3), (128, 3, 1, 1), (128, 128, 1, 1), (1, 128), (128, 128, 3, 3),
                   (64, 3, 4, 4), (1, 512, 4, 4), (256, 128, 4, 4), (512, 256, 4, 4))


def _sn_test_layer(shape):
    """A bias-free Linear (2-D shape) or Conv2d with weight of `shape`, seeded."""
    from torch import nn

    torch.manual_seed(0)
    if len(shape) == 2:
        return nn.Linear(shape[1], shape[0], bias=False)
    return nn.Conv2d(shape[1], shape[0], shape[2:], bias=False)


def _weight_step(module, cot, eval_mode: bool = False):
    """One SN forward + backward of module.weight (a cotangent backwarded into it)."""
    module.train(not eval_mode)

    def run():
        module.zero_grad(set_to_none=True)
        module.weight.backward(cot)
    return run


def sn_layer_cases():
    from torch.nn.utils.parametrizations import spectral_norm as torch_sn

    import gankern as gk

    for shape in SN_LAYER_SHAPES:
        cot = torch.randn(shape)
        yield shape, {"plain": _weight_step(_sn_test_layer(shape), cot),
                      "gankern": _weight_step(gk.spectral_norm(_sn_test_layer(shape)), cot),
                      "torch": _weight_step(torch_sn(_sn_test_layer(shape)), cot)}


SN_EVAL_SHAPES = ((8, 8, 3, 3), (1, 4096), (32, 32, 3, 3), (40, 40, 3, 3), (48, 48, 3, 3), (56, 56, 3, 3),
                  (64, 64, 3, 3), (256, 256), (128, 128, 3, 3), (512, 256, 4, 4))


def sn_eval_cases():
    from torch.nn.utils.parametrizations import spectral_norm as torch_sn

    import gankern as gk

    for shape in SN_EVAL_SHAPES:
        cot = torch.randn(shape)
        yield shape, {"gankern": _weight_step(gk.spectral_norm(_sn_test_layer(shape), impl="cpu"), cot, True),
                      "torch": _weight_step(torch_sn(_sn_test_layer(shape)), cot, True)}


SN_LEGACY_CHANNELS = (8, 32, 48, 64, 80, 96, 128)


def sn_legacy_cases():
    from torch import nn

    import gankern as gk

    for c in SN_LEGACY_CHANNELS:
        torch.manual_seed(0)
        base = nn.Conv2d(c, c, 3, padding=1)
        legacy = nn.utils.spectral_norm(copy.deepcopy(base))
        converted = gk.convert_spectral_norm(nn.Sequential(nn.utils.spectral_norm(copy.deepcopy(base))), group=False)[0]
        x = torch.randn(2, c, 8, 8)

        def step(m, x=x):
            def run():
                m.zero_grad(set_to_none=True)
                m(x).sum().backward()
            return run
        yield (c, c, 3, 3), {"gankern": step(converted), "torch": step(legacy)}


def sn_dstep_runs():
    from torch.nn.utils.parametrizations import spectral_norm as torch_sn

    import gankern as gk
    from gankern.bench.cases.spectral_norm import SNGANResNetD32, _apply_sn
    from gankern.bench.floors import weight_copies

    torch.manual_seed(0)
    base = SNGANResNetD32()
    x = torch.randn(2, 3, 32, 32)
    models = {"no SN": copy.deepcopy(base),
              "copy of W": weight_copies(copy.deepcopy(base)),
              "gankern SN": _apply_sn(copy.deepcopy(base), gk.spectral_norm),
              "torch SN": _apply_sn(copy.deepcopy(base), torch_sn)}

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(x).mean().backward()
        return run

    return {k: step(m) for k, m in models.items()}


def _paired_overheads(runs: dict, rounds: int, cold: bool) -> dict:
    """Median over rounds of (wall time - the first run's wall time in the same round)."""
    from gankern.bench.runner import _flush_cpu_cache, paired_overhead

    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    labels = list(runs)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            if cold:
                _flush_cpu_cache()
            t0 = time.perf_counter()
            runs[label]()
            times[label].append(time.perf_counter() - t0)
    floor = times[labels[0]]
    return {k: paired_overhead(v, floor) for k, v in times.items() if k != labels[0]}


def _medians(runs: dict, rounds: int, inner: int) -> dict:
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(rounds):
        for label, fn in runs.items():
            t0 = time.thread_time()
            for _ in range(inner):
                fn()
            times[label].append((time.thread_time() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("op", choices=("bias_act", "gp_dstep", "sn_layers", "sn_dstep", "sn_eval", "sn_legacy"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1; sn_dstep: 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; sn_dstep: 60)")
    parser.add_argument("--cold", action="store_true", help="sn_dstep: flush the cache before every call")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (2 if args.op == "sn_dstep" else 1))
    rounds = args.rounds or (60 if args.op == "sn_dstep" else 15)
    if args.op == "sn_dstep":
        over = _paired_overheads(sn_dstep_runs(), rounds, args.cold)
        print("SNGAN-ResNet-32 D step, batch 2, overhead over no SN: " + ", ".join(
            f"{k} {v * 1e3:.2f} ms" for k, v in over.items()) + f"; torch SN / gankern SN "
            f"{over['torch SN'] / over['gankern SN']:.2f}", flush=True)
        return 0
    if args.op == "gp_dstep":
        for name, runs in gp_dstep_cases():
            med = _medians(runs, rounds, 1)
            base = med["unfused D, hand-written GP"]
            print(f"{name}: " + ", ".join(f"{k} {v * 1e3:.2f} ms ({base / v:.3f}x)" for k, v in med.items()),
                  flush=True)
        return 0
    if args.op in ("sn_eval", "sn_legacy"):
        what = "eval fwd+bwd" if args.op == "sn_eval" else "legacy-order training fwd+bwd"
        for shape, runs in (sn_eval_cases() if args.op == "sn_eval" else sn_legacy_cases()):
            med = _medians(runs, rounds, 20)
            print(f"{str(shape):18s} {math.prod(shape):8d} elements  {what}: gankern {med['gankern'] * 1e6:7.1f} us, "
                  f"torch {med['torch'] * 1e6:7.1f} us  torch/gankern {med['torch'] / med['gankern']:.2f}", flush=True)
        return 0
    if args.op == "sn_layers":
        for shape, runs in sn_layer_cases():
            med = _medians(runs, rounds, 20)
            gk_over, torch_over = med["gankern"] - med["plain"], med["torch"] - med["plain"]
            print(f"{str(shape):18s} plain {med['plain'] * 1e6:7.1f} us  SN overhead: gankern "
                  f"{gk_over * 1e6:7.1f} us, torch {torch_over * 1e6:7.1f} us  torch/gankern "
                  f"{torch_over / gk_over:.2f}", flush=True)
        return 0
    for shape, numel, plain, fused in bias_act_cases():
        med = _medians({"plain": plain, "fused": fused}, rounds, max(1, int(1e6 // numel)))
        p, f = med["plain"], med["fused"]
        print(f"{str(shape):20s} {numel:8d} elements  plain {p * 1e6:8.1f} us  fused {f * 1e6:8.1f} us  "
              f"plain/fused {p / f:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
