"""Training pieces: losses, regularizers, the gradient penalty, lazy regularization, trainer."""

from .gradient_penalty import gradient_penalty

__all__ = ["gradient_penalty"]
