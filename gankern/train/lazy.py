"""Lazy regularization (StyleGAN2, Karras et al. 2020, appendix B): compute the penalty only
every k-th D step, weighted by k, and correct the D optimizer for the shorter effective run.

With the penalty on 1 step in k, an Adam/SGD step sequence of k plain steps plus one penalty
minibatch behaves like k+1 steps compressed into k; StyleGAN2 scales the learning rate and the
Adam betas by c = k / (k + 1) to keep the same per-sample dynamics. These helpers are the whole
recipe, usable by any trainer (gk.train's regularizers take every=k and use them).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


def _check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int):
        raise TypeError(f"every must be an int, got {type(every).__name__}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return every


def lazy_ratio(every: int) -> float:
    """c = k / (k + 1), the StyleGAN2 mb_ratio; 1.0 when every is 1 (no lazy regularization)."""
    every = _check_every(every)
    return 1.0 if every == 1 else every / (every + 1)


def lazy_optimizer_args(lr: float, betas: Sequence[float] = (0.0, 0.99), every: int = 16):
    """(lr * c, (beta1 ** c, beta2 ** c)) for the optimizer of a lazily regularized D."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive float, got {lr!r}")
    betas = tuple(betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two floats in [0, 1), got {betas!r}")
    c = lazy_ratio(every)
    return float(lr) * c, tuple(float(b) ** c for b in betas)


def is_lazy_step(step: int, every: int) -> bool:
    """Whether D step `step` (counted from 0) computes the penalty."""
    return step % _check_every(every) == 0


class LazyPenalty:
    """Wraps a penalty callable: on every `every`-th call it returns every * penalty, else None.

    >>> r1 = LazyPenalty(lambda D, real: gk.gradient_penalty(D, real, kind="r1"), every=16)
    >>> extra = r1(D, real)       # None on 15 of 16 steps
    >>> if extra is not None: (extra).backward()
    The step counter is part of state_dict(), so a resumed run keeps its phase.
    """

    def __init__(self, penalty: Callable[..., torch.Tensor], every: int = 16):
        if not callable(penalty):
            raise TypeError(f"penalty must be callable, got {type(penalty).__name__}")
        self.penalty = penalty
        self.every = _check_every(every)
        self.step = 0

    def __call__(self, *args, **kwargs) -> Optional[torch.Tensor]:
        due = is_lazy_step(self.step, self.every)
        self.step += 1
        if not due:
            return None
        out = self.penalty(*args, **kwargs)
        if isinstance(out, tuple):  # (penalty, norms) with return_norms=True
            return (out[0] * self.every,) + tuple(out[1:])
        return out * self.every

    def state_dict(self) -> dict:
        return {"step": self.step, "every": self.every}

    def load_state_dict(self, state: dict) -> None:
        self.every = _check_every(state["every"])
        self.step = int(state["step"])
