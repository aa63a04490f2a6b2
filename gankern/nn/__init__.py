"""The nn.Module side of gankern: EMA and PostHocEMA of a model's weights, spectral norm (a drop-in
for torch's, the converter from it, and the grouping of a model's SN layers into one autograd
node), and fused bias + activation (BiasAct, fuse_bias_act)."""

from . import ema_schedules
from .bias_act import BiasAct, DeferredBiasAct, FuseReport, fuse_bias_act
from .ema import EMA
from .posthoc_ema import PostHocEMA
from .spectral_norm import SpectralNorm, spectral_norm
from .spectral_norm_convert import convert_spectral_norm
from .spectral_norm_group import group_spectral_norm

__all__ = ["BiasAct", "DeferredBiasAct", "FuseReport", "fuse_bias_act", "EMA", "PostHocEMA", "ema_schedules", "SpectralNorm", "convert_spectral_norm", "group_spectral_norm", "spectral_norm"]
