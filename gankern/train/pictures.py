"""The sample pictures fit writes: a scatter over the data for 2-D samples, a grid for images.

matplotlib with the Agg backend (no display needed) for scatters; Pillow for image grids, which
needs no plotting library at all.
"""

from __future__ import annotations

import math
import os

import torch


def _atomic_target(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return f"{path}.tmp-{os.getpid()}.png"


def save_scatter(path, samples: torch.Tensor, data: torch.Tensor | None = None,
                 centers: torch.Tensor | None = None, title: str | None = None,
                 extra: dict | None = None) -> None:
    """Samples (N, 2) over the data (grey) and the mode centres (red crosses); extra: more
    labelled (N, 2) sample sets drawn side by side (e.g. {"EMA G": ...})."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = [(title or "samples", samples)] + list((extra or {}).items())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    ref = data if data is not None else samples
    lim = float(ref.detach().abs().max()) * 1.25 + 0.1
    for ax, (name, s) in zip(axes[0], panels):
        if data is not None:
            d = data.detach().cpu()
            ax.scatter(d[:, 0], d[:, 1], s=2, c="0.75", label="data")
        s = s.detach().float().cpu()
        ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:blue", alpha=0.5, label="G")
        if centers is not None:
            ax.scatter(centers[:, 0], centers[:, 1], marker="x", c="red", s=30, label="modes")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name)
    fig.tight_layout()
    tmp = _atomic_target(path)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def save_grid(path, images: torch.Tensor, nrow: int | None = None, scale: int = 4) -> None:
    """Images (N, C, H, W) in [-1, 1] tiled into one PNG, each pixel upscaled `scale` times."""
    from PIL import Image

    x = images.detach().float().cpu().clamp(-1, 1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    pad = 1
    canvas = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
    pixels = ((canvas + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    arr = pixels.numpy()
    im = Image.fromarray(arr[:, :, 0] if c == 1 else arr, "L" if c == 1 else "RGB")
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    tmp = _atomic_target(path)
    im.save(tmp, format="PNG")
    os.replace(tmp, path)


def save_samples(path, samples: torch.Tensor, data=None, centers=None, title=None) -> None:
    """Scatter for (N, 2) samples, image grid otherwise."""
    if samples.dim() == 2 and samples.shape[1] == 2:
        save_scatter(path, samples, data=data, centers=centers, title=title)
    elif samples.dim() == 4:
        save_grid(path, samples)
    elif samples.dim() == 3:
        save_grid(path, samples.unsqueeze(1))
    else:
        raise ValueError(f"no picture for samples of shape {tuple(samples.shape)}")
