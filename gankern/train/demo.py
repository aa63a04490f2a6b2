"""`gankern demo`: the main job — a GAN on the 8-Gaussian ring, on the CPU, in about a minute.

R1 (or WGAN-GP) + spectral norm + EMA through gankern's fused ops (gk.gradient_penalty,
gk.spectral_norm, gk.EMA) and gk.train.GANTrainer. Prints modes covered and the high-quality rate
(gankern.metrics.mode_metrics, 2,500 samples) for the raw and the EMA generator and writes a
picture of both over the data (default runs/demo.png). The recipes, recipe() in this file, are
the ones measured in the README.
"""

from __future__ import annotations

import os
import sys
import time

# What every recipe shares: small MLPs, a ReLU G (it can flatten whole regions of z onto a mode),
# Adam (0.5, 0.99), 16-d latents.
BASE = dict(loss="ns", z_dim=16, hidden=64, layers=3, act="relu", batch_size=256, betas=(0.5, 0.99),
            reg_every=1, n_critic=1, in_scale=1.0, lr_final=None, lr_decay_from=0.5)

# (reg, spectral norm) -> the measured ring recipe (README, "Quality").
# With SN, D is in_scale-Lipschitz (in_scale 20 for modes 0.02 wide, models.py) and smoother than
# an unconstrained D, so it gets the larger learning rate (TTUR, 5e-3 vs G's 2e-3). Both learning
# rates then fall linearly over the second half to lr_final x: late in a run the samples that
# miss sit just outside 3 std or on bridges between modes, the anneal tightens G onto the modes
# and takes the raw G past 90%, not only its EMA (an EMA horizon of ~100 steps follows the
# annealed G closely). R1 is lazy (every 16 steps, StyleGAN2), which also cuts the step time by
# about a fifth. WGAN-GP's linear loss needs the critic ahead of G: 2 D steps per G step and
# faster learning rates for both.
RING = {
    ("r1", True): dict(gamma=0.01, reg_every=16, g_lr=2e-3, d_lr=5e-3, ema=0.99, steps=4000,
                       in_scale=20.0, lr_final=0.05),
    ("wgan-gp", True): dict(loss="wgan", gamma=1.0, n_critic=2, g_lr=4e-3, d_lr=1e-2, ema=0.99,
                            steps=5000, in_scale=20.0, lr_final=0.05),
    # R3GAN-style (Huang et al. 2024): relativistic loss + R1 and R2 from one pass
    # (gk.gradient_penalty kind="r1+r2"), lazy as the R1 recipe, otherwise the R1 recipe's settings.
    ("r1+r2", True): dict(loss="rsgan", gamma=0.01, reg_every=16, g_lr=2e-3, d_lr=5e-3, ema=0.99,
                          steps=4000, in_scale=20.0, lr_final=0.05),
    # --no-sn: the unconstrained-D recipes (no anneal; the EMA does the averaging).
    ("r1", False): dict(gamma=0.1, g_lr=2e-3, d_lr=2e-3, ema=0.995, steps=4000),
    ("wgan-gp", False): dict(loss="wgan", gamma=0.1, g_lr=2e-3, d_lr=2e-3, ema=0.995, steps=4000),
}

# The 5x5 grid on top of the ring recipe: 25 modes need a wider G and D and a larger batch (less
# noisy gradients) and a longer run. R1 runs on every step (lazy R1 found no mode on the grid), with
# gamma 0.03 (at 0.01, G swung across the grid for thousands of steps with some seeds), and the
# anneal is longer and deeper (from 40% of the run, to 2%). Measured for R1 + SN (the default);
# the other combinations are not tuned for the grid.
GRID = dict(hidden=128, batch_size=512, steps=14000)
GRID_R1_SN = dict(reg_every=1, gamma=0.03, lr_final=0.02, lr_decay_from=0.4)


def recipe(data: str = "ring", reg: str = "r1", sn: bool = True) -> dict:
    """The demo's settings for a data set (ring, grid), regularizer (r1, wgan-gp) and SN on D."""
    r = dict(BASE, **RING[(reg, bool(sn))])
    if data == "grid":
        r.update(GRID)
        if (reg, bool(sn)) == ("r1", True):
            r.update(GRID_R1_SN)
    return r


def configure(parser):
    import argparse

    parser.add_argument("--steps", type=int, default=None,
                        help="D steps (default: the recipe's; ring R1 4000, ring WGAN-GP 5000, grid 14000)")
    parser.add_argument("--reg", default="r1", help="r1 (default), wgan-gp or r1+r2 (R3GAN-style, rsgan loss; "
                                                    "ring with spectral norm only)")
    parser.add_argument("--data", default="ring", help="ring (default) or grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of models, latents and data (default 0)")
    parser.add_argument("--sn", action=argparse.BooleanOptionalAction, default=True,
                        help="spectral norm on D, D's input scaled by 20: SN's Lipschitz bound "
                             "(default on; --no-sn for an unconstrained D)")
    parser.add_argument("--out", default=os.path.join("runs", "demo.png"), help="picture (default runs/demo.png)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: faster than more for models this small)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress (a bar on a terminal, else a line every 10 s)")


def _error(msg) -> int:
    print(f"gankern demo: error: {msg}", file=sys.stderr)
    return 2


def main(args) -> int:
    import torch

    from ..data import grid, ring
    from ..metrics import mode_metrics
    from .models import MLPDiscriminator, MLPGenerator
    from .pictures import save_scatter
    from .regularizers import R1, R1R2, WGANGP
    from .trainer import GANTrainer, TrainingDiverged

    if args.steps is not None and args.steps < 1:
        return _error("--steps must be >= 1")
    if args.reg not in ("r1", "wgan-gp", "r1+r2"):
        return _error(f"--reg must be r1, wgan-gp or r1+r2, got {args.reg!r}")
    if args.reg == "r1+r2" and not (args.sn and args.data == "ring"):
        return _error("--reg r1+r2 has a recipe for the ring with spectral norm only")
    if args.data not in ("ring", "grid"):
        return _error(f"--data must be ring or grid, got {args.data!r}")
    if args.threads < 1:
        return _error("--threads must be >= 1")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        return _error(f"--device must be cpu or cuda (or cuda:N), got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    data = ring() if args.data == "ring" else grid()
    r = recipe(args.data, args.reg, args.sn)
    steps = args.steps if args.steps is not None else r["steps"]
    torch.manual_seed(args.seed)
    G = MLPGenerator(r["z_dim"], (2,), r["hidden"], r["layers"], act=r["act"]).to(device)
    D = MLPDiscriminator((2,), r["hidden"], r["layers"], in_scale=r["in_scale"]).to(device)
    if args.reg == "r1":
        reg = R1(gamma=r["gamma"], every=r["reg_every"])
    elif args.reg == "r1+r2":
        reg = R1R2(gamma=r["gamma"], every=r["reg_every"])
    else:
        reg = WGANGP(weight=r["gamma"], every=r["reg_every"])
    lr_decay = (int(steps * r["lr_decay_from"]), steps, r["lr_final"]) if r["lr_final"] else None
    trainer = GANTrainer(G, D, loss=r["loss"], reg=reg, g_lr=r["g_lr"], d_lr=r["d_lr"], betas=r["betas"],
                         n_critic=r["n_critic"], ema=r["ema"], spectral_norm=args.sn,
                         batch_size=r["batch_size"], seed=args.seed, lr_decay=lr_decay)
    extras = "".join([" + spectral norm" if args.sn else "", f" + EMA({r['ema']})",
                      f", lr x{r['lr_final']:g} by the end" if lr_decay else "",
                      f", {r['n_critic']} D steps per G step" if r["n_critic"] > 1 else ""])
    print(f"gankern demo: {args.data} of {len(data.centers)} Gaussians (std {data.std}), "
          f"{r['loss']} loss + {reg!r}{extras}, {steps} steps on {device}")
    t0 = time.time()
    try:
        trainer.fit(data, steps, every=steps, progress=not args.quiet)
    except TrainingDiverged as e:
        print(f"gankern demo: error: {e}", file=sys.stderr)
        return 1
    seconds = time.time() - t0
    results = {}
    for name, use_ema in (("G", False), ("EMA G", True)):
        samples = trainer.sample(2500, ema=use_ema, seed=args.seed + 1000)
        results[name] = (samples, mode_metrics(samples, data.centers, data.std))
    k = len(data.centers)
    print(f"trained in {seconds:.1f} s ({seconds / steps * 1e3:.1f} ms/step)")
    print(f"{'generator':<10} {'modes covered':>14} {'high quality':>13}")
    for name, (_, m) in results.items():
        print(f"{name:<10} {m['modes']:>11}/{k:<2} {100 * m['hq']:>12.1f}%")
    if args.out:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        ref = data.sample(2500, generator=torch.Generator().manual_seed(1))
        save_scatter(args.out, results["G"][0], data=ref, centers=data.centers,
                     title=f"G: {results['G'][1]['modes']}/{k} modes, {100 * results['G'][1]['hq']:.0f}% HQ",
                     extra={f"EMA G: {results['EMA G'][1]['modes']}/{k} modes, "
                            f"{100 * results['EMA G'][1]['hq']:.0f}% HQ": results["EMA G"][0]})
        print(f"picture: {args.out}")
    return 0
