"""EMA decay schedules used by GAN codebases, as callables step -> decay.

stylegan: StyleGAN2-ADA's half-life in thousands of images with a linear ramp-up, so early
          training (when G changes fast) is averaged over a short window.
warmup:   the inverse-gamma warm-up of ema-pytorch / timm (decay grows as 1 - (1 + t/γ)^-p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class stylegan:  # noqa: N801 - used like a function: gk.ema_schedules.stylegan(...)
    """decay(step) = 0.5 ** (batch_size / max(min(half_life_kimg*1000, step*batch_size*rampup), 1e-8)).

    rampup=None disables the ramp (constant half-life). step counts EMA updates from 0, so the
    first update copies, as StyleGAN2-ADA's training loop does at cur_nimg = 0.
    """

    half_life_kimg: float = 10.0
    rampup: float | None = 0.05
    batch_size: int = 32

    def __post_init__(self):
        if not self.half_life_kimg > 0:
            raise ValueError(f"half_life_kimg must be > 0, got {self.half_life_kimg}")
        if self.rampup is not None and not self.rampup > 0:
            raise ValueError(f"rampup must be > 0 or None, got {self.rampup}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")

    def __call__(self, step: int) -> float:
        nimg = self.half_life_kimg * 1000
        if self.rampup is not None:
            nimg = min(nimg, step * self.batch_size * self.rampup)
        return 0.5 ** (self.batch_size / max(nimg, 1e-8))


@dataclass(frozen=True)
class warmup:  # noqa: N801
    """decay(step) = clamp(1 - (1 + step/inv_gamma) ** -power, min_decay, max_decay)."""

    inv_gamma: float = 1.0
    power: float = 2 / 3
    min_decay: float = 0.0
    max_decay: float = 0.9999

    def __post_init__(self):
        if not self.inv_gamma > 0:
            raise ValueError(f"inv_gamma must be > 0, got {self.inv_gamma}")
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power}")
        if not 0.0 <= self.min_decay <= self.max_decay <= 1.0:
            raise ValueError(f"need 0 <= min_decay <= max_decay <= 1, got {self.min_decay}, {self.max_decay}")

    def __call__(self, step: int) -> float:
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return min(max(value, self.min_decay), self.max_decay)


def half_life_steps(decay: float) -> float:
    """Steps after which an old weight's share of the average has halved."""
    return math.log(0.5) / math.log(decay) if 0 < decay < 1 else math.inf
