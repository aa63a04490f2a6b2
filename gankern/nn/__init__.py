"""Modules and converters: EMA (and, as they land, spectral norm and fused bias+activation)."""

from . import ema_schedules
from .bias_act import BiasAct, DeferredBiasAct, FuseReport, fuse_bias_act
from .ema import EMA
from .posthoc_ema import PostHocEMA
from .spectral_norm import SpectralNorm, convert_spectral_norm, spectral_norm

__all__ = ["BiasAct", "DeferredBiasAct", "FuseReport", "fuse_bias_act", "EMA", "PostHocEMA", "ema_schedules", "SpectralNorm", "convert_spectral_norm", "spectral_norm"]
