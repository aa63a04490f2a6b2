#!/usr/bin/env python
"""The most any exact gradient penalty can speed up the WGAN-GP trainer cases, measured.

    python scripts/penalty_bound.py [--rounds 25] [--cold]

Why this exists: issue 16 asks the conv-critic trainer to run >= 1.2x faster with gankern
swapped in. The penalty's gradient needs four passes through D: the forward at x_hat (for the
activation pattern), the input gradient g, and the double backward's two (the gradient with
respect to the first backward's output, and the weight gradients). The hand-written penalty runs
one more: torch's second derivative of a piecewise-linear activation is an all-zero tensor that
the engine sends back through D(x_hat)'s forward graph, where every layer runs its backward on
zeros. That pass is the only work an exact penalty can drop (gk.gradient_penalty drops it,
train/zero_second_order.py); the loss, the G step, Adam and the EMA are the same either way.

So the bound on the speedup, per round, is T / (T - n_critic * t0): T is the as-written
iteration, t0 one zero pass (D(x_hat)'s forward-graph backward of a zero cotangent, timed on
its own right after, in the same round). It is generous: it charges gankern nothing for its
own work. Printed beside it, gankern's iteration timed in the same rounds.

Same models, sizes and data as `gankern bench --quick --ops trainers` (gankern/bench/cases/
trainers.py). Wall time, 2 threads, interleaved rounds, medians; --cold flushes the last-level
cache before every timed call, as the bench does.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch


def _zero_pass_timer(D, real, fake, alpha):
    """One zero pass: the backward of D(x_hat)'s forward graph with a zero cotangent, timed alone."""
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = D(x)
    zeros = torch.zeros_like(out)
    t0 = time.perf_counter()
    out.backward(zeros)
    return time.perf_counter() - t0


def bound(name, build, opts: dict, rounds: int, cold: bool) -> dict:
    import gankern as gk
    from gankern.bench.cases import trainers as T
    from gankern.bench.runner import _flush_cpu_cache

    torch.manual_seed(0)
    G0, D0 = build()
    data = [tuple(t.float() for t in d)
            for d in T.make_data(2 * T.N_CRITIC, 16, opts["image"], opts["z_dim"], torch.device("cpu"))]

    def iteration(use_gankern):
        G, D = copy.deepcopy(G0), copy.deepcopy(D0)
        if use_gankern:
            gk.nn.fuse_bias_act(D)
        return T.Iteration(G, D, data, loss=opts["loss"], penalty=T.gankern_gp if use_gankern else T.hand_written_gp,
                           lr=opts["lr"], betas=opts["betas"], use_gankern=use_gankern)

    plain, fused = iteration(False), iteration(True)
    D_probe = copy.deepcopy(D0)
    real, _, alpha = data[0]
    with torch.no_grad():
        fake = G0(data[0][1])
    for it in (plain, fused):
        it.run()
    _zero_pass_timer(D_probe, real, fake, alpha)

    def timed(fn):
        if cold:
            _flush_cpu_cache()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    bounds, speedups, zero_shares = [], [], []
    for r in range(rounds):
        order = (plain, fused) if r % 2 == 0 else (fused, plain)
        t = {id(it): timed(it.run) for it in order}
        if cold:
            _flush_cpu_cache()
        t0 = T.N_CRITIC * _zero_pass_timer(D_probe, real, fake, alpha)
        t_plain = t[id(plain)]
        bounds.append(t_plain / (t_plain - t0))
        speedups.append(t_plain / t[id(fused)])
        zero_shares.append(t0 / t_plain)
    return {"case": name, "bound": statistics.median(bounds), "gankern": statistics.median(speedups),
            "zero_share": statistics.median(zero_shares), "rounds": rounds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--cold", action="store_true", help="flush the last-level cache before every timed call")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    torch.set_num_threads(args.threads)
    from gankern.bench.cases import trainers as T

    print(f"batch 16, {T.N_CRITIC} D steps + G + EMA, fp32, {args.threads} threads, {args.rounds} rounds"
          + (", cold cache" if args.cold else ""))
    for name, build, opts in T.wgan_gp_trainers(32):  # the quick bench's width
        r = bound(name, build, opts, args.rounds, args.cold)
        print(f"{name}: zero passes {100 * r['zero_share']:.1f}% of the as-written iteration; "
              f"bound {r['bound']:.3f}x; gankern {r['gankern']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
