"""gankern's fused ops, usable alone as replacement ops in existing trainers."""

from .ema import ema_update_

__all__ = ["ema_update_"]
