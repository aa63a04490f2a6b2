"""The CPU spectral-norm kernels' two compiled copies (baseline ISA and AVX2, gankern/cpu_dispatch.h)
give the same answers: power iteration, sigma and W/sigma bit for bit (no FMA, explicit partial
sums), the backward within an ulp-level bound (its <G, W> reduction is split by vector width),
and both equal the float64 reference. Sizes cross the parallel grain (2^15 elements) and leave
tails off every vector width."""

import pytest
import torch

from gankern import _native
from gankern.ops import spectral_norm as sn_ops
from gankern.ops.spectral_norm import reference as ref

pytestmark = pytest.mark.skipif(not _native.available("cpu"), reason="native CPU backend not built")

SHAPES = [((37, 131), 0), ((129, 3, 3, 29), 0), ((5, 7, 3, 3), 1)]


def _run(weight, u, v, dim, grad):
    u, v = u.clone(), v.clone()
    sigma, u_copy, v_copy = sn_ops.power_iteration_(weight, u, v, dim, 2, 1e-12, "cpu")
    w = weight.detach().requires_grad_(True)
    out = sn_ops.normalize(w, u_copy, v_copy, sigma, dim, "cpu")
    (d_weight,) = torch.autograd.grad(out, w, grad)
    eval_sigma = sn_ops.sigma(weight, u, v, dim, "cpu")
    return [sigma, u, v, out.detach(), eval_sigma], d_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_baseline_and_avx2_copies_agree(shape, dim, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    m, k = ref.to_matrix(weight, dim).shape
    u = torch.nn.functional.normalize(torch.randn(m, generator=gen, dtype=torch.float64), dim=0).to(dtype)
    v = torch.nn.functional.normalize(torch.randn(k, generator=gen, dtype=torch.float64), dim=0).to(dtype)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    monkeypatch.delenv("GANKERN_CPU_NO_AVX2", raising=False)
    fast, d_fast = _run(weight, u, v, dim, grad)
    monkeypatch.setenv("GANKERN_CPU_NO_AVX2", "1")
    base, d_base = _run(weight, u, v, dim, grad)
    for a, b in zip(fast, base):
        assert torch.equal(a, b)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    assert ((d_fast - d_base).abs().max() / d_base.abs().max()).item() <= tol
    # Both against float64 math: the fused backward's formula written out.
    sigma, u2, v2 = (t.double() for t in base[:3])
    g64 = grad.double()
    d_ref = g64 / sigma - (g64 * weight.double()).sum() / sigma ** 2 * \
        _outer_as_weight(u2, v2, weight, dim)
    assert ((d_base.double() - d_ref).abs().max() / d_ref.abs().max()).item() <= 10 * tol


def _outer_as_weight(u, v, weight, dim):
    """u v^T laid out like the weight (dim first in the matrix view, as torch's SN does)."""
    perm = [dim] + [i for i in range(weight.dim()) if i != dim]
    moved = weight.permute(perm).shape
    outer = torch.outer(u, v).reshape(moved)
    return outer.permute(torch.argsort(torch.tensor(perm)).tolist())
