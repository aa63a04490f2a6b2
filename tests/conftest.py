"""Test setup: run the Triton kernels on CPU tensors (TRITON_INTERPRET=1) when there is no GPU.

TRITON_INTERPRET must be set before triton decorates any kernel, so it happens here, before
gankern is imported. With a CUDA device the same tests run on CUDA tensors instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (scripts/test.sh runs 2 workers) each worker gets its share of the cores:
# two workers with a full set of torch threads each would fight over the same cores.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

import pytest  # noqa: E402

from gankern import _backend  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backends_for(implemented, device=DEVICE):
    """The backends a test should exercise here: every implemented one that can run, plus
    "cuda_sim" (the CUDA kernels' source on CPU tensors, issue 15) wherever "cuda" is
    implemented and scripts/build_cuda_sim.py has built the harness."""
    found = [b for b in implemented if _backend.usable(b, device)]
    if "cuda" in implemented and _backend.usable("cuda_sim", device):
        found.append("cuda_sim")
    return found


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def one_thread():
    """One torch thread for the test: on tiny tensors, a second thread per op only adds wake-ups
    (on a loaded 2-core machine two threads cost up to 100x: 17 s vs 0.1 s for 200 EMA steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
