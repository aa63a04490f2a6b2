"""gankern: fused kernels (C++ on the CPU; CUDA and Triton on GPUs) for GAN training: the gradient
penalty, spectral norm, EMA.

The public API (DESIGN.md §2). Everything else is internal.
"""

from . import ops
from .nn import EMA, PostHocEMA, ema_schedules
from .nn import convert_spectral_norm, group_spectral_norm, spectral_norm
from .train.gradient_penalty import gradient_penalty
from . import data, metrics, train  # gk.train.GANTrainer, gk.data.ring(), gk.metrics.mode_metrics

__version__ = "0.1.0"

__all__ = ["EMA", "PostHocEMA", "ema_schedules", "spectral_norm", "convert_spectral_norm", "group_spectral_norm", "gradient_penalty", "ops", "train", "data", "metrics", "__version__"]
