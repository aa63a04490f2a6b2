"""The vector (unmasked, alignment-hinted) paths of the Triton kernels give the same results as
their masked paths: full blocks and tails in one launch, 16-byte aligned and unaligned tensors.

Why: those paths exist for the compiled code (128-bit accesses, see test_aot_compile.py); a
hint that is wrong on a GPU reads the wrong bytes, so the launcher must only claim alignment
it checked. Here each case runs through the Triton backend against the reference.
"""

import pytest
import torch

from conftest import DEVICE, backends_for
from gankern.ops import ema_update_

pytestmark = pytest.mark.skipif("triton" not in backends_for(["triton"]), reason="Triton cannot run here")


def _pairs(sd, pd, sizes, offset, seed):
    g = torch.Generator().manual_seed(seed)
    shadow = [torch.randn(n + offset, generator=g).to(sd)[offset:].to(DEVICE) for n in sizes]
    params = [torch.randn(n + offset, generator=g).to(pd)[offset:].to(DEVICE) for n in sizes]
    return shadow, params


@pytest.mark.parametrize("sd,pd", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                   (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_ema_full_blocks_tails_and_alignment(sd, pd, offset):
    sizes = [2 * 4096, 4096 + 5, 3]  # two full blocks; a full block and a tail; a tail only
    shadow, params = _pairs(sd, pd, sizes, offset, seed=offset)
    if offset:
        assert any(s.data_ptr() % 16 for s in shadow)  # the unaligned launch really is one
    expect = [s.double() + 0.3 * (p.double() - s.double()) for s, p in zip(shadow, params)]
    ema_update_(shadow, params, 0.3, impl="triton")
    tol = 1e-6 if sd == torch.float32 else 1e-2
    for s, e in zip(shadow, expect):
        assert torch.isfinite(s).all()
        err = ((s.double() - e).norm() / e.norm()).item()
        assert err < tol, err
