"""Quality metrics of the built-in data sets: modes covered / high-quality rate on the 2-D
mixtures, and classifier-based class coverage, KL and Fréchet distance on the digits."""

from .digits import digits_metrics, frechet_distance
from .modes import mode_metrics

__all__ = ["mode_metrics", "digits_metrics", "frechet_distance"]
