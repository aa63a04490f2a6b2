"""gankern: fused GPU kernels for GAN training (gradient penalty, spectral norm, EMA).

The public API (DESIGN.md §2). Everything else is internal.
"""

from . import ops
from .nn import EMA, ema_schedules

__version__ = "0.1.0"

__all__ = ["EMA", "ema_schedules", "ops", "__version__"]
