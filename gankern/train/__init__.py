"""Training pieces, each usable alone: losses, regularizers, the gradient penalty, lazy
regularization, and GANTrainer, which puts them together."""

from .gradient_penalty import gradient_penalty
from .lazy import LazyPenalty, is_lazy_step, lazy_optimizer_args, lazy_ratio
from .errors import TrainingDiverged, TrainingInterrupted
from .losses import LOSSES, d_loss, g_loss
from .regularizers import DRAGAN, GANQP, R1, R2, R1R2, WGANGP, InstanceNoise, l2_penalty
from .trainer import GANTrainer

__all__ = ["gradient_penalty", "LazyPenalty", "is_lazy_step", "lazy_optimizer_args", "lazy_ratio",
           "GANTrainer", "TrainingDiverged", "TrainingInterrupted", "LOSSES", "d_loss", "g_loss",
           "WGANGP", "R1", "R2", "R1R2", "DRAGAN", "GANQP", "InstanceNoise", "l2_penalty"]
