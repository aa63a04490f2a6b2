"""Discriminator regularizers as small objects a trainer applies: WGAN-GP, R1, R2, R1+R2, DRAGAN, GAN-QP,
plus the L2 weight penalty and annealed instance noise.

The gradient penalties are gk.gradient_penalty (fused norm + penalty, double backward included);
this file only decides when and how strongly each runs. `every=k` is lazy regularization
(Karras et al. 2020, StyleGAN2 §B): the penalty runs on one D step in k, multiplied by k so its
average strength is unchanged, and the D optimizer's lr and betas are corrected by
c = k / (k + 1) (lr * c, beta ** c) because the penalty steps are extra optimizer steps.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .distributed import global_draw


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _every(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"every must be an int >= 1, got {value!r}")
    return value


class Regularizer:
    """Base: `every` lazy interval; penalty(...) returns the (un-multiplied) penalty."""

    every = 1
    uses_scores = False  # True: computed from the D scores of the loss, no extra D call

    def config(self) -> dict:
        raise NotImplementedError


class GradientPenalty(Regularizer):
    """gk.gradient_penalty of `kind` with weight / center, every `every` D steps."""

    kind = "r1"

    def __init__(self, weight: float = 10.0, center: Optional[float] = None, every: int = 1,
                 impl: str = "auto"):
        self.weight = _positive(weight, "weight")
        self.center = None if center is None else float(center)
        self.every = _every(every)
        self.impl = impl

    def penalty(self, D, real, fake, generator=None, scaler=None):
        from .gradient_penalty import gradient_penalty

        return gradient_penalty(D, real, fake, kind=self.kind, weight=self.weight, center=self.center,
                                generator=generator, scaler=scaler, impl=self.impl)

    def config(self) -> dict:
        return {"name": type(self).__name__, "weight": self.weight, "center": self.center,
                "every": self.every, "impl": self.impl}

    def __repr__(self):
        return (f"{type(self).__name__}(weight={self.weight}, center={self.center}, "
                f"every={self.every})")


class WGANGP(GradientPenalty):
    """Gulrajani et al. 2017: weight * mean((||grad D(x_hat)|| - center)^2) on interpolates;
    center=0 is the zero-centered variant (Mescheder et al. 2018; Thanh-Tung et al. 2019)."""

    kind = "wgan-gp"


class DRAGAN(GradientPenalty):
    """Kodali et al. 2017: the one-centered penalty around perturbed real samples."""

    kind = "dragan"


class R1(GradientPenalty):
    """Mescheder et al. 2018: (gamma/2) * mean(||grad D(real)||^2)."""

    kind = "r1"

    def __init__(self, gamma: float = 10.0, every: int = 1, impl: str = "auto"):
        super().__init__(weight=gamma, center=None, every=every, impl=impl)

    @property
    def gamma(self):
        return self.weight

    def config(self) -> dict:
        return {"name": type(self).__name__, "gamma": self.weight, "every": self.every, "impl": self.impl}

    def __repr__(self):
        return f"{type(self).__name__}(gamma={self.weight}, every={self.every})"


class R2(R1):
    """Mescheder et al. 2018: (gamma/2) * mean(||grad D(fake)||^2)."""

    kind = "r2"


class R1R2(R1):
    """R3GAN (Huang et al. 2024): (gamma/2) * (mean ||grad D(real)||^2 + mean ||grad D(fake)||^2),
    both from one D forward over cat([real, fake]) and one double backward (gk.gradient_penalty
    kind="r1+r2"); a D with BatchNorm in training mode is refused there."""

    kind = "r1+r2"


class GANQP(Regularizer):
    """Su 2018: (r - f)^2 / (2 lambda d(x_r, x_f)) on the loss's own scores; with loss="wgan"
    this is exactly loss="gan-qp"."""

    uses_scores = True

    def __init__(self, qp_lambda: float = 10.0):
        self.qp_lambda = _positive(qp_lambda, "qp_lambda")
        if self.qp_lambda == 0:
            raise ValueError("qp_lambda must be > 0")

    def penalty_from_scores(self, real_scores, fake_scores, real, fake):
        from .losses import _flat, qp_distance

        diff = _flat(real_scores, "real_scores") - _flat(fake_scores, "fake_scores")
        return (diff.pow(2) / (2.0 * self.qp_lambda * qp_distance(real, fake).clamp_min(1e-8))).mean()

    def config(self) -> dict:
        return {"name": "GANQP", "qp_lambda": self.qp_lambda}

    def __repr__(self):
        return f"GANQP(qp_lambda={self.qp_lambda})"


REGULARIZERS = {"wgan-gp": WGANGP, "wgangp": WGANGP, "r1": R1, "r2": R2, "r1+r2": R1R2, "r1r2": R1R2,
                "dragan": DRAGAN, "gan-qp": GANQP, "ganqp": GANQP}


def from_config(cfg: dict) -> Regularizer:
    """Rebuild a regularizer from Regularizer.config() (checkpoints store configs, not objects)."""
    cfg = dict(cfg)
    cls = {c.__name__: c for c in (WGANGP, DRAGAN, R1, R2, R1R2, GANQP)}.get(cfg.pop("name", None))
    if cls is None:
        raise ValueError(f"unknown regularizer config {cfg!r}")
    return cls(**cfg)


def as_list(reg) -> list[Regularizer]:
    """reg=None | a Regularizer | a sequence of them | a name ("r1", ...), checked."""
    if reg is None:
        return []
    if isinstance(reg, str):
        key = reg.lower()
        if key in ("none", ""):
            return []
        if key not in REGULARIZERS:
            raise ValueError(f"reg must be one of none, {', '.join(sorted(set(REGULARIZERS)))}; got {reg!r}")
        return [REGULARIZERS[key]()]
    regs = list(reg) if isinstance(reg, (list, tuple)) else [reg]
    for r in regs:
        if not isinstance(r, Regularizer):
            raise TypeError(f"reg must be a gk.train regularizer (R1, R2, R1R2, WGANGP, DRAGAN, GANQP), "
                            f"got {type(r).__name__}")
    return regs


def lazy_interval(regs: Sequence[Regularizer]) -> int:
    """The shared lazy interval k of the penalties (1 when none is lazy)."""
    ks = {r.every for r in regs if not r.uses_scores}
    if len(ks) > 1:
        raise ValueError(f"lazy regularizers must share one interval `every`, got {sorted(ks)}")
    return ks.pop() if ks else 1


def l2_penalty(module: nn.Module) -> torch.Tensor:
    """sum of squared parameters (the d_l2 weight penalty of the trainer)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.stack([p.float().pow(2).sum() for p in params]).sum()


class InstanceNoise:
    """Annealed instance noise (Sønderby et al. 2017; Arjovsky & Bottou 2017): N(0, sigma_t^2)
    added to D's real and fake inputs, sigma_t = sigma * max(0, 1 - t / anneal_steps)."""

    def __init__(self, sigma: float = 0.0, anneal_steps: int = 10_000):
        self.sigma = _positive(sigma, "instance_noise")
        if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 1:
            raise ValueError(f"noise_anneal_steps must be an int >= 1, got {anneal_steps!r}")
        self.anneal_steps = anneal_steps

    def sigma_at(self, step: int) -> float:
        return self.sigma * max(0.0, 1.0 - step / self.anneal_steps)

    def __call__(self, x: torch.Tensor, step: int, generator=None) -> torch.Tensor:
        s = self.sigma_at(step)
        if s == 0.0:
            return x
        # Under torchrun: this rank's slice of the noise one process draws for the global batch.
        noise = global_draw(torch.randn, x.shape, generator, dtype=x.dtype, device=x.device)
        return x + s * noise
