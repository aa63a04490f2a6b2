"""Modules and converters: EMA (and, as they land, spectral norm and fused bias+activation)."""

from . import ema_schedules
from .ema import EMA

__all__ = ["EMA", "ema_schedules"]
