"""Shapes that switch the GPU kernels to their other launch configurations, against float64.

Why: the efficiency changes of issue 14 added paths that small test shapes never reach: the
CUDA SN cols_dot cuts the rows of W into slices (from 128 rows, summed by the finalize kernel),
rows_dot strides over a dim=1 weight's columns with a carry, and the CUDA EMA splits chunks
over blocks with vector access. On the CPU the CUDA kernels run through the host harness
(backend "cuda_sim"), the Triton ones under the interpreter.
"""

import pytest
import torch

from conftest import backends_for
from gankern.ops import spectral_norm as sn_ops
from gankern.testing import assert_close_to_reference
from test_spectral_norm_ops import rand_problem, reference_power

BACKENDS = [b for b in backends_for(["triton", "cuda", "cpu"])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, dim", [((300, 20), 0),          # 300 rows: 4 cols_dot row slices
                                         ((520, 3, 3, 3), 0),    # 520 rows, K = 27: 8 slices
                                         ((24, 140, 4, 4), 1)])  # dim=1: B = 16, 140 rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_power_iteration_many_rows_and_dim1(shape, dim, dtype, backend):
    w, u, v = rand_problem(shape, dim, dtype, seed=3)
    u0, v0 = u.clone(), v.clone()
    sigma, _, _ = sn_ops.power_iteration_(w, u, v, dim, 2, 1e-12, backend)
    s64, u64, v64 = reference_power(w.double(), u0.double(), v0.double(), dim, 2)
    s_same, u_same, v_same = reference_power(w, u0, v0, dim, 2)
    for out, r64, same, name in ((sigma, s64, s_same, "sigma"), (u, u64, u_same, "u"), (v, v64, v_same, "v")):
        assert_close_to_reference(out, r64, dtype, ref_same_dtype=same, name=name)
    sig = sn_ops.sigma(w, u, v, dim, backend)
    assert_close_to_reference(sig, reference_power(w.double(), u.double(), v.double(), dim, 0)[0], dtype,
                              ref_same_dtype=reference_power(w, u, v, dim, 0)[0], name="sigma()")


@pytest.mark.parametrize("backend", [b for b in backends_for(["triton", "cuda"])])
@pytest.mark.parametrize("sd,pd", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                   (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64)])
def test_ema_chunks_split_over_blocks(backend, sd, pd):
    from gankern.ops import ema_update_

    g = torch.Generator().manual_seed(1)
    # 3 table chunks and a tail, an aligned and an unaligned (offset 1) tensor, a tiny one.
    shadow = [torch.randn(3 * 16384 + 77, generator=g).to(sd), torch.randn(20001, generator=g).to(sd)[1:],
              torch.randn(3, generator=g).to(sd)]
    params = [torch.randn(s.numel(), generator=g).to(pd) for s in shadow]
    expect = [s.double().lerp(p.double(), 0.3) for s, p in zip(shadow, params)]
    ema_update_(shadow, params, 0.3, impl=backend)
    for s, e in zip(shadow, expect):
        err = ((s.double() - e).norm() / e.norm()).item()
        assert err < (1e-6 if sd != torch.bfloat16 else 1e-2), err


@pytest.mark.parametrize("backend", [b for b in backends_for(["triton", "cuda", "cpu"])])
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1.0), (torch.bfloat16, 1.0), (torch.float64, 1.0),
                                         (torch.float64, 1e300), (torch.float64, 1e-300)])
def test_norm_penalty_small_batch_long_rows(backend, dtype, scale):
    """Batch 2 of 49,152-element rows: the Triton forward splits each row over 3 programs, the CUDA
    one over 6 blocks (partials in a workspace); float64 rows at 1e300 / 1e-300 take the rescaled
    pass after the split sums over- or underflow."""
    from gankern import _native
    from gankern.ops.norm_penalty import norm_penalty

    if backend == "cuda_sim":  # the shape really takes the sliced launch, and a large batch does not
        assert _native._load_cuda_sim().norm_penalty_workspace_elems(2, 3 * 128 * 128) == 2 * 6
        assert _native._load_cuda_sim().norm_penalty_workspace_elems(256, 3 * 128 * 128) == 0

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 128, 128, generator=g, dtype=torch.float64)
    grads = (x * scale).to(dtype)
    norms_ref = x.to(dtype).double().flatten(1).norm(dim=1) * scale  # exact scaling by a power-free factor
    pen, norms = norm_penalty(grads, 1.0, 10.0, impl=backend)
    rel = ((norms.double() - norms_ref).abs() / norms_ref).max().item()
    assert rel < (1e-6 if dtype != torch.bfloat16 else 1e-3), rel
    if scale == 1.0:
        pen_ref = 10.0 * ((norms_ref - 1.0) ** 2).mean()
        assert abs(pen.double().item() - pen_ref.item()) / pen_ref.item() < 1e-5
