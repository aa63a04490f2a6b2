"""EMA decay schedules used by GAN codebases, as callables step -> decay.

stylegan:    StyleGAN2-ADA's half-life in thousands of images with a linear ramp-up, so early
             training (when G changes fast) is averaged over a short window.
warmup:      the inverse-gamma warm-up (decay grows as 1 - (1 + t/γ)^-p) on gankern's own step.
timm:        timm ModelEmaV3's decay, step for step, including its update_after_step offset.
ema_pytorch: ema-pytorch EMA's decay and copy steps, step for step.

`step` is always gankern's: the number of gk.EMA.update() calls before this one (0 first).
The two tool schedules return 0.0 on the steps where the tool copies the weights (a lerp with
weight 1 is an exact copy), so gk.EMA reproduces them with update_after_step=0; they carry the
gk.EMA arguments they need (`ema_arguments`), which gk.EMA checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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


def _check_unit(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")


def _check_count(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class timm:  # noqa: N801
    """timm `ModelEmaV3(decay, min_decay, update_after_step, use_warmup, warmup_gamma,
    warmup_power)` updated with `update(model, step=...)`.

    timm's training script passes step = the number of optimizer updates so far, counted from 1,
    so gankern's step k is timm's step k + first_step (first_step=1; pass 0 if your loop calls
    timm with step=k). timm then computes, in Python floats:
        t = max(0, timm_step - update_after_step - 1)
        t == 0             -> decay 0 (the EMA becomes a copy)
        use_warmup         -> max(min(1 - (1 + t / warmup_gamma) ** -warmup_power, decay), min_decay)
        otherwise          -> decay
    and lerps every floating state_dict entry (parameters and buffers) with weight 1 - decay,
    copying the others: gk.EMA(model, decay=gk.ema_schedules.timm(...), buffers="average")
    (exclude_buffers=True in timm, which copies buffers, is buffers="copy").
    """

    decay: float = 0.9999
    use_warmup: bool = False
    warmup_gamma: float = 1.0
    warmup_power: float = 2 / 3
    min_decay: float = 0.0
    update_after_step: int = 0
    first_step: int = 1

    def __post_init__(self):
        _check_unit(self.decay, "decay")
        _check_unit(self.min_decay, "min_decay")
        if not isinstance(self.use_warmup, bool):
            raise ValueError(f"use_warmup must be a bool, got {self.use_warmup!r}")
        if not self.warmup_gamma > 0:
            raise ValueError(f"warmup_gamma must be > 0, got {self.warmup_gamma}")
        if not self.warmup_power > 0:
            raise ValueError(f"warmup_power must be > 0, got {self.warmup_power}")
        _check_count(self.update_after_step, "update_after_step", 0)
        _check_count(self.first_step, "first_step", 0)

    @property
    def ema_arguments(self) -> dict:
        return {"update_every": 1, "update_after_step": 0}

    def __call__(self, step: int) -> float:
        t = max(0, step + self.first_step - self.update_after_step - 1)
        if t <= 0:
            return 0.0
        if not self.use_warmup:
            return self.decay
        value = 1 - (1 + t / self.warmup_gamma) ** -self.warmup_power
        return max(min(value, self.decay), self.min_decay)


@dataclass(frozen=True)
class ema_pytorch:  # noqa: N801
    """ema-pytorch `EMA(beta, update_after_step, update_every, inv_gamma, power, min_value)`
    (releases 0.7-0.8), one `ema.update()` per gankern step.

    At its k-th call (k from 0) ema-pytorch: copies the model on the first call; otherwise does
    nothing unless k % update_every == 0; then copies if k <= update_after_step, else lerps
    every floating parameter and buffer with weight 1 - decay, where (its step counter is an
    int64 tensor, so this runs in float32 and is rounded to float32, clamp included)
        epoch = max(k - update_after_step, 0)                      # (k + 1) - uas - 1
        decay = 0 if epoch <= 0 else clamp(1 - (1 + epoch / inv_gamma) ** -power, min_value, beta)
    and beta == 1 freezes the average (no lerp at all). Integer buffers are left untouched.
    Reproduce it with gk.EMA(model, decay=gk.ema_schedules.ema_pytorch(...),
    update_every=<the same update_every>, buffers="average").
    """

    beta: float = 0.9999
    update_after_step: int = 100
    update_every: int = 10
    inv_gamma: float = 1.0
    power: float = 2 / 3
    min_value: float = 0.0

    def __post_init__(self):
        _check_unit(self.beta, "beta")
        _check_unit(self.min_value, "min_value")
        _check_count(self.update_after_step, "update_after_step", 0)
        _check_count(self.update_every, "update_every", 1)
        if not self.inv_gamma > 0:
            raise ValueError(f"inv_gamma must be > 0, got {self.inv_gamma}")
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power}")

    @property
    def ema_arguments(self) -> dict:
        return {"update_every": self.update_every, "update_after_step": 0}

    def __call__(self, step: int) -> float:
        if step == 0 or step <= self.update_after_step:
            return 0.0  # ema-pytorch copies (gk.EMA calls the schedule on averaging steps only)
        if self.beta == 1.0:
            return 1.0  # frozen: a lerp with weight 0 leaves the average as it is
        epoch = torch.tensor(step - self.update_after_step, dtype=torch.float32)
        value = 1 - (1 + epoch / self.inv_gamma) ** -self.power
        return value.clamp(min=self.min_value, max=self.beta).item()


def half_life_steps(decay: float) -> float:
    """Steps after which an old weight's share of the average has halved."""
    return math.log(0.5) / math.log(decay) if 0 < decay < 1 else math.inf
