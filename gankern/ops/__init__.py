"""gankern's fused ops, usable alone as replacement ops in existing trainers."""

from .ema import ema_update_
from .norm_penalty import norm_penalty

__all__ = ["ema_update_", "norm_penalty"]
