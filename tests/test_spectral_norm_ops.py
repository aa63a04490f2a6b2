"""The spectral-norm custom ops against their float64 reference, on every backend.

Power iteration (u, v, sigma), W/sigma and the fused backward dW = G/sigma - (<G,W>/sigma^2) u v^T
on odd shapes and every dim; gradcheck/gradgradcheck in float64; opcheck; torch.compile;
autocast; bad input. Outputs are allocated inside the ops, so uninitialized memory is filled
with NaN (torch's deterministic mode) to catch any element a kernel leaves unwritten.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from conftest import backends_for

import gankern as gk
from gankern import _native
from gankern.ops import spectral_norm as sn_ops
from gankern.ops.spectral_norm import reference as ref
from gankern.testing import assert_close_to_reference, rel_error

BACKENDS = backends_for(sn_ops.IMPLEMENTED)
FUSED = [b for b in BACKENDS if b != "reference"]
# (weight shape, dim): rows/columns past the Triton blocks (16 x 128), single rows, every dim.
SHAPES = [((7, 5), 0), ((1, 127), 0), ((37, 131), 0), ((4, 5, 3, 3), 1), ((3, 4, 5), 2), ((6, 3, 3), 0)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def nan_filled_empty():
    """torch.empty returns NaN-filled memory: an output element no kernel writes stays NaN."""
    import torch.utils.deterministic as det

    old_alg, old_fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old_alg)
    det.fill_uninitialized_memory = old_fill


def rand_problem(shape, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    a, m, b = ref.matrix_dims(shape, dim)
    u = F.normalize(torch.randn(m, generator=g, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(a * b, generator=g, dtype=torch.float64), dim=0)
    return w.to(dtype), u.to(dtype), v.to(dtype)


def reference_power(w, u, v, dim, n):
    u, v = u.clone(), v.clone()
    w_mat = ref.to_matrix(w, dim)
    ref.power_iteration_reference_(w_mat, u, v, n, 1e-12)
    return ref.sigma_reference(w_mat, u, v), u, v


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", SHAPES)
def test_power_iteration(shape, dim, dtype, backend):
    w, u, v = rand_problem(shape, dim, dtype)
    u0, v0 = u.clone(), v.clone()
    sigma, u_copy, v_copy = sn_ops.power_iteration_(w, u, v, dim, 2, 1e-12, backend)
    s64, u64, v64 = reference_power(w.double(), u0.double(), v0.double(), dim, 2)
    s_same, u_same, v_same = reference_power(w, u0, v0, dim, 2)
    for out, r64, same, name in ((sigma, s64, s_same, "sigma"), (u, u64, u_same, "u"), (v, v64, v_same, "v")):
        assert out.dtype == dtype
        assert_close_to_reference(out, r64, dtype, ref_same_dtype=same, name=name)
    assert torch.equal(u_copy, u) and torch.equal(v_copy, v)
    assert u_copy.data_ptr() != u.data_ptr()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, dim", SHAPES)
def test_normalize_and_backward(shape, dim, dtype, backend):
    w, u, v = rand_problem(shape, dim, dtype, seed=1)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    w64, u64, v64, g64 = w.double(), u.double(), v.double(), g.double()
    s64 = ref.sigma_reference(ref.to_matrix(w64, dim), u64, v64)
    s_same = ref.sigma_reference(ref.to_matrix(w, dim), u, v)
    sigma = sn_ops.sigma(w, u, v, dim, backend)
    assert_close_to_reference(sigma, s64, dtype, ref_same_dtype=s_same, name="sigma")
    out = sn_ops.normalize(w, u, v, sigma, dim, backend)
    assert_close_to_reference(out, w64 / s64, dtype, ref_same_dtype=w / s_same, name="W/sigma")
    d = sn_ops._normalize_backward_op(g, w, u, v, None, dim, backend)
    d64 = ref.normalize_backward_reference(g64, w64, u64, v64, s64, dim)
    d_same = ref.normalize_backward_reference(g, w, u, v, s_same, dim)
    assert_close_to_reference(d, d64, dtype, ref_same_dtype=d_same, name="dW")
    # and the backward equals autograd through torch's own formula W / (u^T W v)
    wr = w64.clone().requires_grad_(True)
    (wr / ref.sigma_reference(ref.to_matrix(wr, dim), u64, v64)).backward(g64)
    assert rel_error(d64, wr.grad) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, dim", [((3, 4), 0), ((2, 3, 2), 1)])
def test_gradcheck_gradgradcheck(shape, dim, backend):
    w, u, v = rand_problem(shape, dim, torch.float64, seed=3)
    w.requires_grad_(True)

    def f(weight):
        return sn_ops.normalize(weight, u, v, None, dim, backend)

    assert torch.autograd.gradcheck(f, (w,))
    assert torch.autograd.gradgradcheck(f, (w,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    w, u, v = rand_problem((4, 3, 2), 1, torch.float64, seed=4)
    sigma = ref.sigma_reference(ref.to_matrix(w, 1), u, v)
    g = torch.randn_like(w)
    wg = w.clone().requires_grad_(True)
    torch.library.opcheck(sn_ops._normalize_op, (wg, u, v, None, 1, backend))
    torch.library.opcheck(sn_ops._normalize_op, (wg, u, v, sigma, 1, backend))
    torch.library.opcheck(sn_ops._normalize_backward_op, (g, w, u, v, sigma, 1, backend))
    torch.library.opcheck(sn_ops._sigma_op, (w, u, v, 1, backend))
    torch.library.opcheck(sn_ops._power_iteration_op, (w, u.clone(), v.clone(), 1, 2, 1e-12, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    torch.manual_seed(0)
    a = torch_sn(nn.Conv2d(3, 4, 3))
    torch.manual_seed(0)
    b = gk.spectral_norm(nn.Conv2d(3, 4, 3), impl=backend)
    compiled = torch.compile(b, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 5, 5)
    for _ in range(2):
        ya, yb = a(x), compiled(x)
        assert rel_error(yb, ya) <= 1e-5
        ya.sum().backward()
        yb.sum().backward()
    assert rel_error(b.parametrizations.weight[0]._u, a.parametrizations.weight[0]._u) <= 1e-5
    assert rel_error(b.parametrizations.weight.original.grad, a.parametrizations.weight.original.grad) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_power_iteration_in_fp32(backend):
    torch.manual_seed(0)
    a = torch_sn(nn.Linear(6, 5))
    torch.manual_seed(0)
    b = gk.spectral_norm(nn.Linear(6, 5), impl=backend)
    x = torch.randn(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = a(x), b(x)
    assert yb.dtype == ya.dtype == torch.bfloat16
    assert b.parametrizations.weight[0]._u.dtype == torch.float32
    assert rel_error(b.parametrizations.weight[0]._u, a.parametrizations.weight[0]._u) <= 1e-5
    assert rel_error(yb, ya) <= 1e-2


def test_native_checks_name_the_argument():
    w, u, v = rand_problem((4, 3), 0, torch.float32)
    with pytest.raises(ValueError, match="u must be"):
        _native.sn_check(w, u[:3], v, 0)
    with pytest.raises(TypeError, match="v must have dtype"):
        _native.sn_check(w, u, v.double(), 0)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        _native.sn_check(w.t(), v, u, 0)
    with pytest.raises(ValueError, match="grad must be"):
        _native.sn_check(w, u, v, 0, grad=torch.randn(3, 4))
    with pytest.raises(ValueError, match="weight must have at least 2"):
        _native.sn_check(w[0], u, v, 0)


@pytest.mark.parametrize("backend", [b for b in FUSED if b in ("cpu", "triton")])
@pytest.mark.parametrize("scale", [1e20, 1e30, 1e36])
def test_power_iteration_stays_finite_for_huge_float32_weights(scale, backend):
    # torch's float32 SN (and a plain fused float pass) overflow beyond ~1e19. The CPU kernel
    # redoes such an iteration in double; Triton scales each block's partial by its max |W v|.
    # Finite weights keep finite u, v and sigma, equal to float64.
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(37, 131, generator=g, dtype=torch.float64) * scale).float()
    u = F.normalize(torch.randn(37, generator=g), dim=0)
    v = F.normalize(torch.randn(131, generator=g), dim=0)
    u64, v64 = u.double(), v.double()
    sigma, _, _ = sn_ops.power_iteration_(w, u, v, 0, 2, 1e-12, backend)
    sigma64, _, _ = sn_ops.power_iteration_(w.double(), u64, v64, 0, 2, 1e-12, "reference")
    assert torch.isfinite(sigma) and torch.isfinite(u).all() and torch.isfinite(v).all()
    assert rel_error(sigma, sigma64) <= 1e-6
    assert rel_error(u, u64) <= 1e-5 and rel_error(v, v64) <= 1e-5
