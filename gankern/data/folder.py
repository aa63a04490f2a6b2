"""Any folder of PNG/JPEG images as one tensor, resized with Pillow.

Loaded once into memory: the trainer samples batches from a tensor with its own generator, which
is what makes a resumed run bit-identical. Fine for the small sets a CPU demo uses.
"""

from __future__ import annotations

import os

import torch

EXTENSIONS = (".png", ".jpg", ".jpeg")


def load_image_folder(path, size: int = 32, channels: int = 3, recursive: bool = True) -> torch.Tensor:
    """Every PNG/JPEG under path, center-cropped to a square, resized to size x size, as float32
    (N, channels, size, size) in [-1, 1]. channels: 1 (grayscale) or 3 (RGB)."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path!r} does not exist or is not a directory")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(EXTENSIONS)]
        if not recursive:
            break
    if not files:
        raise ValueError(f"image folder {path!r} contains no PNG/JPEG images")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((size, size), Image.BICUBIC)
                t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except OSError as e:
            raise ValueError(f"cannot read image {f!r}: {e}") from e
        images.append(t.reshape(size, size, channels).permute(2, 0, 1))
    return torch.stack(images).float() / 127.5 - 1.0
