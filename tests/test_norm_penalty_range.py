"""Issue 13 item 2: norm_penalty and gradient_penalty return finite, exact results for every finite
input whose exact result is representable, at any magnitude (denormal rows, rows of 1e19 and
beyond, up to the dtype's largest finite value) and any center, on every backend.

The oracle is written in plain Python floats, independently of the package: math.hypot (which
scales internally, so it neither over- nor underflows) for the norms, exact rationals for the
penalty, and the gradient s*g + (gn - s*c) * (g / n) with g / n divided directly (|g| <= n, so it
cannot overflow as 1/n does for a denormal n). An element whose exact value does not fit the
output dtype is not checked (inf is then the right answer); every other one must be finite and
within the dtype's tolerance of the tensor's largest exact value.
"""

import math
from fractions import Fraction

import pytest
import torch
from conftest import DEVICE, backends_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gankern as gk
from gankern.ops.norm_penalty import IMPLEMENTED, acc_dtype

BACKENDS = backends_for(IMPLEMENTED)
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# decimal exponents each dtype spans, denormals included: the magnitudes hypothesis draws rows from
EXPONENTS = {torch.float64: (-322, 307), torch.float32: (-44, 38), torch.bfloat16: (-39, 38),
             torch.float16: (-7, 4)}


def _to_float(x: Fraction) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf


def oracle(rows, center, weight, gp_up, gn_up):
    """(penalty, norms, grads) of d(gp_up * penalty + <gn_up, norms>)/d grads, as Python floats."""
    norms = [math.hypot(*r) for r in rows]
    if all(math.isfinite(n) for n in norms):
        total = sum((Fraction(n) - Fraction(center)) ** 2 for n in norms)
        penalty = _to_float(Fraction(weight) * total / len(rows))
    else:
        penalty = math.inf
    s = gp_up * 2.0 * weight / len(rows)
    grads = []
    for r, n, gn in zip(rows, norms, gn_up):
        rest = gn - s * center
        grads.append([s * v + (rest * (v / n) if n > 0 else 0.0) for v in r])
    return penalty, norms, grads


def assert_matches(out, exact, dtype, what):
    """Every element whose exact value fits dtype is finite and close to it."""
    out = out.detach().cpu().double().reshape(-1)
    exact = torch.tensor(exact, dtype=torch.float64).reshape(-1)
    fits = exact.abs() <= torch.finfo(dtype).max
    assert torch.isfinite(out[fits]).all(), f"{what}: non-finite where the exact result fits {dtype}"
    if fits.any():
        # Relative to the tensor's largest exact value, with the absolute resolution of dtype's
        # denormals as a floor (a denormal result carries fewer bits than a normal one).
        scale = exact[fits].abs().max().item()
        err = (out[fits] - exact[fits]).abs().max().item()
        bound = TOL[dtype] * scale + 4 * torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
        assert err <= bound, f"{what}: error {err:.3e} > {bound:.3e} (largest exact value {scale:.3e})"


def run_backend(grads, center, weight, gp_up, gn_up, backend):
    g = grads.to(DEVICE).requires_grad_(True)
    p, n = gk.ops.norm_penalty(g, center, weight, impl=backend)
    (dg,) = torch.autograd.grad(p * gp_up + (n * gn_up.to(n)).sum(), g)
    return p, n, dg


def check(grads, center, weight, backend, gp_up=1.0, gn_up=None):
    b = grads.shape[0]
    if gn_up is None:
        gn_up = torch.zeros(b, dtype=torch.float64)
    rows = grads.double().reshape(b, -1).tolist()
    ep, en, eg = oracle(rows, center, weight, gp_up, gn_up.tolist())
    p, n, dg = run_backend(grads, center, weight, gp_up, gn_up, backend)
    acc = acc_dtype(grads.dtype)
    assert p.dtype == acc and n.dtype == acc and dg.dtype == grads.dtype
    assert_matches(n, en, acc, "norms")
    assert_matches(p, [ep], acc, "penalty")
    assert_matches(dg, eg, grads.dtype, "grads")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("center", [0.0, 1.0])
@pytest.mark.parametrize("dtype, value", [
    (torch.float32, 1e-39), (torch.float32, 1e-44), (torch.float32, 3e-38), (torch.float32, 1e19),
    (torch.float32, 1e38), (torch.float64, 1e-310), (torch.float64, 1e-170), (torch.float64, 1e160),
    (torch.float64, 1e307), (torch.float16, 1e-7), (torch.bfloat16, 1e-39), (torch.bfloat16, 1e38)])
def test_denormal_and_huge_rows(backend, center, dtype, value):
    """The issue's repro (float32 rows of ~1e-39 with center 1 gave -inf/NaN gradients on cpu and
    triton), every such magnitude of each dtype, a zero row and an ordinary row beside them."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    g[0] = g[0].abs() * value / 4 + value / 8  # no zero entries: a denormal row
    g[1] *= value / 4
    g[2] = 0.0
    g = g.clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype)
    check(g, center, 1.0, backend, gp_up=1.3, gn_up=torch.tensor([0.5, -2.0, 1.0, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("center, weight", [(1e30, 1.0), (-1e20, 1e-3), (1e-40, 10.0), (1e200, 1e-300)])
def test_any_center(backend, center, weight):
    """Far centers: a float32 gradient of -2*w*c/B * g/n fits even where (n - c)^2 does not, and
    a float64 penalty whose squares overflow but whose weighted mean fits is still finite."""
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g[1] *= 1e-40
    for dtype in (torch.float32, torch.float64):
        check(g.to(dtype), center, weight, backend)


@st.composite
def ranged_inputs(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
    b = draw(st.integers(1, 4))
    inner = draw(st.lists(st.integers(1, 7), min_size=1, max_size=2))
    lo, hi = EXPONENTS[dtype]
    # Each row its own magnitude: denormal, ordinary and huge rows meet in one batch.
    exps = draw(st.lists(st.integers(lo, hi), min_size=b, max_size=b))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    g = torch.randn([b] + inner, generator=gen, dtype=torch.float64)
    for i, e in enumerate(exps):
        g[i] *= 10.0 ** e
    g = g.clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype)
    center = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-1e6, 1e6),
                            st.sampled_from([1e-40, 1e19, -1e30])))
    weight = draw(st.sampled_from([1.0, 10.0, 1e-3, 0.5]))
    gn_up = torch.randn(b, generator=gen, dtype=torch.float64)
    return g, center, weight, gn_up


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=ranged_inputs())
def test_fuzz_magnitudes_and_centers(backend, data):
    g, center, weight, gn_up = data
    check(g, center, weight, backend, gp_up=0.7, gn_up=gn_up)


GP_BACKENDS = ["reference"] + [b for b in BACKENDS if b != "reference"]


@pytest.mark.parametrize("impl", GP_BACKENDS)
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
@pytest.mark.parametrize("dtype, value", [(torch.float32, 1e-39), (torch.float32, 1e-44), (torch.float32, 1e19),
                                          (torch.float32, 1e30), (torch.float64, 1e-310), (torch.float64, 1e200)])
def test_gradient_penalty_linear_d_at_any_scale(impl, kind, dtype, value):
    """gk.gradient_penalty of D(x) = <w, x> has input gradient w in every row: its value and the
    gradient of w are exact and finite at every scale of w, on the plain-PyTorch path too.
    Exact: n = ||w||, penalty = f*(n - c)^2, d/dw = 2*f*(n - c) * w/n (f = weight, or weight/2 for r1)."""
    w64 = torch.tensor([0.6, -0.8, 0.1], dtype=torch.float64) * value
    w = torch.nn.Parameter(w64.to(dtype))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    center = 1.0 if kind == "wgan-gp" else None
    p = gk.gradient_penalty(lambda v: v @ w, x, x.flip(0), kind=kind, weight=2.0, center=center,
                            impl=impl)
    (dw,) = torch.autograd.grad(p, w)
    f, c = (2.0, 1.0) if kind == "wgan-gp" else (1.0, 0.0)
    wl = w.detach().double().tolist()
    n = math.hypot(*wl)
    assert_matches(p, [_to_float(Fraction(f) * (Fraction(n) - Fraction(c)) ** 2)], acc_dtype(dtype), "penalty")
    assert_matches(dw, [2 * f * (n - c) * (v / n) for v in wl], dtype, "d penalty / d w")
