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
from gankern import ops as gk_ops
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


@pytest.fixture
def index64_forced():
    """The CUDA harness with its 32-bit index limit at 0: every elementwise launch takes the int64_t
    kernels huge tensors use (gankern/index32.h); restored afterwards."""
    from gankern import _native

    C = _native._load_cuda_sim()
    default = C.set_index32_limit(0)
    assert C.set_index32_limit(0) == 0  # the hook really holds the value the launchers read
    yield
    C.set_index32_limit(-1)
    assert C.set_index32_limit(-1) == default


def _bias_act_and_sn_backward(dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 7, 9, generator=g, dtype=torch.float64).to(dtype).requires_grad_()  # C = 5, inner = 63
    b = torch.randn(5, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    y = gk_ops.bias_act(x, b, act="lrelu", clamp=0.7, impl="cuda_sim")
    dx, db = torch.autograd.grad(y.square().sum(), (x, b), create_graph=True)
    ddx, = torch.autograd.grad(dx.sum() + db.sum(), x)
    w, u, v = rand_problem((12, 7, 3, 3), 1, dtype, seed=5)
    wr = w.clone().requires_grad_()
    sn_ops.normalize(wr, u, v, None, 1, "cuda_sim").backward(torch.randn(w.shape, generator=g, dtype=torch.float64).to(dtype))
    return [t.detach() for t in (y, dx, db, ddx, wr.grad)]


@pytest.mark.skipif("cuda_sim" not in backends_for(["cuda"]), reason="the CUDA host harness is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_index64_kernels_equal_the_index32_ones(dtype, request):
    """bias_act and the SN backward's elementwise pass index in 32 bits unless the tensor is too big;
    the 64-bit instantiations (forced here on small tensors) give the same bits, and both match
    float64 autograd."""
    index32 = _bias_act_and_sn_backward(dtype)
    request.getfixturevalue("index64_forced")
    index64 = _bias_act_and_sn_backward(dtype)
    for a, b, name in zip(index32, index64, ("y", "dx", "db", "ddx", "dW")):
        assert torch.equal(a, b), name
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 7, 9, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    y64 = gk_ops.bias_act(x.to(dtype).double(), b.to(dtype).double(), act="lrelu", clamp=0.7, impl="reference")
    assert_close_to_reference(index64[0], y64, dtype, name="y")
    w, u, v = rand_problem((12, 7, 3, 3), 1, dtype, seed=5)
    wr = w.double().requires_grad_()
    sn_ops.normalize(wr, u.double(), v.double(), None, 1, "reference").backward(
        torch.randn(w.shape, generator=g, dtype=torch.float64).to(dtype).double())
    assert_close_to_reference(index64[4], wr.grad, dtype, name="dW")
