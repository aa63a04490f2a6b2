"""The 2-D Gaussian-mixture benchmarks of mode collapse: the ring of 8 and the 5x5 grid of 25.

Standard settings, so numbers compare with the literature: the ring has 8 modes evenly spaced on
a circle of radius 2 and the grid 25 modes at {-4, -2, 0, 2, 4}^2, every mode an isotropic
Gaussian of std 0.02 (Metz et al. 2017, Unrolled GANs, for the ring; Srivastava et al. 2017,
VEEGAN, §5.1 and Lin et al. 2018, PacGAN, for both). Samples are drawn with an explicit
torch.Generator so a trainer's resume is bit-identical.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture2D:
    """Equal-weight mixture of isotropic 2-D Gaussians; callable(batch_size, generator) -> samples."""

    def __init__(self, centers: torch.Tensor, std: float, name: str = "mixture"):
        if not isinstance(centers, torch.Tensor) or centers.dim() != 2 or centers.shape[1] != 2:
            raise ValueError(f"centers must be a (K, 2) tensor, got {getattr(centers, 'shape', centers)}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std!r}")
        self.centers = centers.to(torch.float32)
        self.std = float(std)
        self.name = name
        self.shape = (2,)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        k = torch.randint(len(self.centers), (n,), generator=generator)
        return self.centers[k] + self.std * torch.randn(n, 2, generator=generator)

    __call__ = sample

    def __repr__(self):
        return f"{self.name}({len(self.centers)} modes, std={self.std})"


def ring(n_modes: int = 8, radius: float = 2.0, std: float = 0.02) -> GaussianMixture2D:
    """n_modes Gaussians evenly spaced on a circle (the 8-Gaussian ring)."""
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    centers = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture2D(centers, std, name="ring")


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.02) -> GaussianMixture2D:
    """side x side Gaussians on a square lattice centred at 0 (the 25-Gaussian grid)."""
    axis = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    centers = torch.cartesian_prod(axis, axis)
    return GaussianMixture2D(centers, std, name="grid")
