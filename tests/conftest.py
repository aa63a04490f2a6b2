"""Test setup: run the Triton kernels on CPU tensors (TRITON_INTERPRET=1) when there is no GPU.

TRITON_INTERPRET must be set before triton decorates any kernel, so it happens here, before
gankern is imported. With a CUDA device the same tests run on CUDA tensors instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from gankern import _backend  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backends_for(implemented, device=DEVICE):
    """The backends a test should exercise here: every implemented one that can run."""
    return [b for b in implemented if _backend.usable(b, device)]


@pytest.fixture
def device():
    return DEVICE
