"""`gankern dirac`: the Dirac GAN of Mescheder et al. 2018 ("Which training methods for GANs do
actually converge?"), trained with each loss and regularizer of gk.train.

The smallest GAN that shows why training orbits instead of converging: real data is a point mass
at 0, G is a single point theta, D(x) = psi * x. The equilibrium is theta = psi = 0. With
alternating gradient descent the unregularized, WGAN and one-centered-GP (WGAN-GP) games circle
around it or settle off it, while zero-centered penalties (R1, R2, zero-centered GP) spiral into
it. The EMA of theta (gk.EMA) lands near the centre of an orbit even when theta itself does not.
Everything runs through the library: the loss table, gk.gradient_penalty, gk.EMA.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from .losses import LOSSES, d_loss, g_loss
from .regularizers import DRAGAN, GANQP, R1, R2, WGANGP


class DiracG(nn.Module):
    """G(z) = theta for every z: the generator of the Dirac GAN."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([float(theta)], dtype=torch.float64))

    def forward(self, n: int):
        return self.theta.expand(n, 1)


def configs(gamma: float = 1.0) -> list:
    """(name, loss, regularizer or None, expected to converge to theta = 0)."""
    out = [(loss, loss, None, False) for loss in LOSSES]
    out += [
        ("wgan + wgan-gp (1-centered)", "wgan", WGANGP(weight=gamma, impl="reference"), False),
        ("ns + dragan (1-centered)", "ns", DRAGAN(weight=gamma, impl="reference"), False),
        ("ns + zero-centered gp", "ns", WGANGP(weight=gamma, center=0.0, impl="reference"), True),
        ("wgan + zero-centered gp", "wgan", WGANGP(weight=gamma, center=0.0, impl="reference"), True),
        ("ns + r1", "ns", R1(gamma=gamma, impl="reference"), True),
        ("ns + r2", "ns", R2(gamma=gamma, impl="reference"), True),
        ("hinge + r1", "hinge", R1(gamma=gamma, impl="reference"), True),
    ]
    return out


def simulate(loss: str, reg=None, steps: int = 2000, lr: float = 0.1, theta0: float = 1.0,
             psi0: float = 1.0, ema: float = 0.99, seed: int = 0) -> dict:
    """Alternating gradient descent (D step, then G step) from (theta0, psi0); returns the
    trajectory of (theta, psi), the EMA of theta, and the final values."""
    from ..nn import EMA

    G = DiracG(theta0)
    D = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        D.weight.fill_(psi0)
    average = EMA(G, decay=ema, impl="reference")
    gen = torch.Generator().manual_seed(seed)
    # Two copies of the point mass: DRAGAN's perturbation scale std(real) needs two samples.
    real = torch.zeros(2, 1, dtype=torch.float64)
    path = [(theta0, psi0)]
    ema_path = [theta0]
    for _ in range(steps):
        fake = G(2).detach()
        r, f = D(real).squeeze(1), D(fake).squeeze(1)
        loss_d = d_loss(loss, r, f, real, fake)
        if isinstance(reg, GANQP):
            loss_d = loss_d + reg.penalty_from_scores(r, f, real, fake)
        elif reg is not None:
            loss_d = loss_d + reg.penalty(lambda x: D(x).squeeze(1), real, fake, generator=gen)
        (g_psi,) = torch.autograd.grad(loss_d, [D.weight])
        with torch.no_grad():
            D.weight -= lr * g_psi
        fake = G(2)
        loss_g = g_loss(loss, D(real).squeeze(1).detach(), D(fake).squeeze(1))
        (g_theta,) = torch.autograd.grad(loss_g, [G.theta])
        with torch.no_grad():
            G.theta -= lr * g_theta
        average.update(G)
        theta, psi = float(G.theta.detach()), float(D.weight.detach())
        if not (math.isfinite(theta) and math.isfinite(psi)) or abs(theta) > 1e6 or abs(psi) > 1e6:
            break
        path.append((theta, psi))
        ema_path.append(float(average.module.theta))
    theta, psi = path[-1]
    return {"path": path, "ema_path": ema_path, "theta": theta, "psi": psi,
            "ema_theta": ema_path[-1], "diverged": len(path) < steps + 1}


def plot(results: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(5, n)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, res) in zip(axes.flat, results):
        p = torch.tensor(res["path"])
        ax.plot(p[:, 0], p[:, 1], lw=0.8)
        ax.plot(p[0, 0], p[0, 1], "go", ms=4)
        ax.plot(p[-1, 0], p[-1, 1], "rx", ms=6)
        ax.axhline(0, c="0.8", lw=0.5)
        ax.axvline(0, c="0.8", lw=0.5)
        ax.plot([res["ema_theta"]], [0], "k|", ms=12, mew=2)
        ax.set_title(f"{name}\n|θ|={abs(res['theta']):.2g}, EMA |θ|={abs(res['ema_theta']):.2g}", fontsize=8)
        ax.set_xlabel("θ (G)", fontsize=7)
        ax.set_ylabel("ψ (D)", fontsize=7)
        lim = max(1.5, min(float(p.abs().max()) * 1.1, 5.0))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Dirac GAN: (θ, ψ) under alternating GD; green start, red end, | EMA θ", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def configure(parser):
    parser.add_argument("--steps", type=int, default=2000, help="alternating GD steps (default 2000)")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate of both players (default 0.1)")
    parser.add_argument("--gamma", type=float, default=1.0, help="penalty weight of every regularizer")
    parser.add_argument("--theta0", type=float, default=1.0, help="initial θ (default 1)")
    parser.add_argument("--psi0", type=float, default=1.0, help="initial ψ (default 1)")
    parser.add_argument("--ema", type=float, default=0.99, help="EMA decay for θ (default 0.99)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of the names to run")
    parser.add_argument("--out", default=os.path.join("runs", "dirac.png"),
                        help="trajectory plot (default runs/dirac.png)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")


def main(args) -> int:
    import sys

    for name in ("steps",):
        if getattr(args, name) < 1:
            print(f"gankern dirac: error: --{name} must be >= 1", file=sys.stderr)
            return 2
    for name in ("lr", "gamma"):
        if not getattr(args, name) > 0:
            print(f"gankern dirac: error: --{name} must be > 0", file=sys.stderr)
            return 2
    if not 0 <= args.ema < 1:
        print("gankern dirac: error: --ema must be in [0, 1)", file=sys.stderr)
        return 2
    todo = configs(args.gamma)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        todo = [c for c in todo if any(k in c[0] for k in keys)]
        if not todo:
            print(f"gankern dirac: error: --only {args.only!r} matches none of: "
                  f"{', '.join(c[0] for c in configs())}", file=sys.stderr)
            return 2
    from ..progress import Progress

    results, rows = [], []
    bar = Progress(len(todo), "dirac") if not args.json else None
    for name, loss, reg, expect in todo:
        res = simulate(loss, reg, steps=args.steps, lr=args.lr, theta0=args.theta0, psi0=args.psi0,
                       ema=args.ema)
        if bar is not None:
            bar.update(1, last=name)
        results.append((name, res))
        converged = not res["diverged"] and abs(res["theta"]) < 1e-2 and abs(res["psi"]) < 1e-2
        rows.append({"name": name, "theta": res["theta"], "psi": res["psi"], "ema_theta": res["ema_theta"],
                     "converged": converged, "theory_converges": expect, "diverged": res["diverged"]})
    if bar is not None:
        bar.close()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        plot(results, args.out)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"Dirac GAN, alternating GD, lr={args.lr}, {args.steps} steps, from θ={args.theta0}, "
              f"ψ={args.psi0}; penalty weight {args.gamma}")
        print(f"{'game':<30} {'|θ|':>10} {'|ψ|':>10} {'EMA |θ|':>10}  converges to θ=0")
        for r in rows:
            verdict = "diverged" if r["diverged"] else ("yes" if r["converged"] else "no")
            print(f"{r['name']:<30} {abs(r['theta']):>10.3g} {abs(r['psi']):>10.3g} "
                  f"{abs(r['ema_theta']):>10.3g}  {verdict}")
        if args.out:
            print(f"trajectories: {args.out}")
    return 0
