"""Modes covered and high-quality rate: the standard mode-collapse metrics on 2-D mixtures.

As defined by VEEGAN (Srivastava et al. 2017) and reused by PacGAN (Lin et al. 2018): a sample is
high quality when it lies within 3 std of some mode; a mode is covered when at least 1% of the
samples (of 2,500, by convention) are high-quality samples assigned to it (its nearest mode).
"""

from __future__ import annotations

import torch


def mode_metrics(samples: torch.Tensor, centers: torch.Tensor, std: float, n_std: float = 3.0,
                 min_fraction: float = 0.01) -> dict:
    """{"modes": covered modes, "n_modes": K, "hq": high-quality fraction, "per_mode": counts}."""
    if not isinstance(samples, torch.Tensor) or samples.dim() != 2 or samples.shape[1] != centers.shape[1]:
        raise ValueError(f"samples must be (N, {centers.shape[1]}), got {getattr(samples, 'shape', samples)}")
    if samples.shape[0] == 0:
        raise ValueError("samples is empty")
    x = samples.detach().to(torch.float64).cpu()
    c = centers.to(torch.float64).cpu()
    dist = torch.cdist(x, c)
    nearest_dist, nearest = dist.min(1)
    good = torch.isfinite(nearest_dist) & (nearest_dist <= n_std * std)
    counts = torch.bincount(nearest[good], minlength=len(c))
    covered = int((counts >= min_fraction * x.shape[0]).sum())
    return {"modes": covered, "n_modes": len(c), "hq": float(good.double().mean()),
            "per_mode": counts.tolist()}
