"""scikit-learn's 8x8 handwritten digits (1,797 images, UCI optdigits test set) as a tensor.

Small enough to train a GAN on a CPU in minutes and still an image data set with ten classes, so
class coverage (gankern.metrics.digits) measures mode collapse. scikit-learn ships the data in
its wheel, so nothing is downloaded.
"""

from __future__ import annotations

import torch


def load_digits(return_labels: bool = False):
    """Images as float32 (1797, 1, 8, 8) scaled from 0..16 to [-1, 1]; with labels (1797,) int64."""
    try:
        from sklearn.datasets import load_digits as _sk_load
    except ImportError as e:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from e
    d = _sk_load()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    if return_labels:
        return x, torch.as_tensor(d.target, dtype=torch.int64)
    return x
