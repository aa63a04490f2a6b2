"""Built-in data sets for the demos and `gankern train`: the 2-D mode-collapse benchmarks
(ring of 8 and grid of 25 Gaussians), scikit-learn's 8x8 digits, and image folders."""

from .digits import load_digits
from .folder import load_image_folder
from .toy import GaussianMixture2D, grid, ring

__all__ = ["GaussianMixture2D", "grid", "ring", "load_digits", "load_image_folder"]
