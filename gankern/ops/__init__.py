"""gankern's fused ops, usable alone as replacement ops in existing trainers."""

from .bias_act import bias_act
from .ema import ema_update_
from .ema.multi import ema_update_multi_
from .norm_penalty import norm_penalty

__all__ = ["bias_act", "ema_update_", "ema_update_multi_", "norm_penalty"]
