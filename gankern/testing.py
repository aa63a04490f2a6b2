"""Tolerances and the compare-with-float64-reference helper of DESIGN.md §3.

Every kernel test compares against the reference run in float64 on the CPU with the relative
error ‖out − ref‖ / ‖ref‖. Half-precision results must also be at most 2× as far from the
float64 answer as the reference itself run in that dtype: a kernel may not be worse than what
PyTorch users already get. NaN never passes.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

# Relative-error bounds by the dtype the kernel computed in.
TOLERANCES = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    "tf32": 3e-4,
    torch.bfloat16: 1e-2,
    torch.float16: 1e-2,
}
HALF_DTYPES = (torch.float16, torch.bfloat16)
ODD_SIZES = (1, 7, 127, 4097)


def _flat64(ts) -> torch.Tensor:
    if isinstance(ts, torch.Tensor):
        ts = [ts]
    ts = list(ts)
    if not ts:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([t.detach().to("cpu", torch.float64).reshape(-1) for t in ts])


def rel_error(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖ over one tensor or a list; inf on any NaN or shape mismatch."""
    a, b = _flat64(out), _flat64(ref)
    if a.shape != b.shape:
        return math.inf
    if torch.isnan(a).any() or torch.isnan(b).any():
        # NaN only "matches" when both sides have NaN in the same places (the reference's own).
        if not torch.equal(torch.isnan(a), torch.isnan(b)):
            return math.inf
        keep = ~torch.isnan(a)
        a, b = a[keep], b[keep]
    inf_a, inf_b = torch.isinf(a), torch.isinf(b)
    if inf_a.any() or inf_b.any():
        if not torch.equal(a[inf_a | inf_b], b[inf_a | inf_b]):
            return math.inf
        a, b = a[~(inf_a | inf_b)], b[~(inf_a | inf_b)]
    denom = torch.linalg.vector_norm(b).item()
    num = torch.linalg.vector_norm(a - b).item()
    if denom == 0.0:
        return num
    return num / denom


def tolerance(dtype) -> float:
    return TOLERANCES[dtype]


def assert_close_to_reference(out, ref64, dtype, *, ref_same_dtype=None, name: str = "output",
                              tol: float | None = None) -> float:
    """Assert the DESIGN.md bound; returns the error so tests can report it."""
    err = rel_error(out, ref64)
    bound = tolerance(dtype) if tol is None else tol
    assert math.isfinite(err), f"{name}: non-finite or mismatched result (NaN/Inf/shape)"
    assert err <= bound, f"{name}: relative error {err:.3e} > {bound:.1e} ({dtype})"
    if dtype in HALF_DTYPES and ref_same_dtype is not None:
        ref_err = rel_error(ref_same_dtype, ref64)
        # The floor keeps a reference that happens to be exact from demanding exactness.
        floor = torch.finfo(dtype).eps
        assert err <= max(2 * ref_err, floor), (
            f"{name}: relative error {err:.3e} is more than 2x the same-dtype reference's {ref_err:.3e}")
    return err


def poison_(ts: Iterable[torch.Tensor]) -> None:
    """Fill outputs with NaN before a kernel writes them: an unwritten element then fails."""
    for t in ts:
        if t.is_floating_point():
            t.fill_(float("nan"))


def assert_all_written(ts: Sequence[torch.Tensor], name: str = "output") -> None:
    for i, t in enumerate(ts):
        assert not torch.isnan(t).any(), f"{name}[{i}]: element left unwritten (still NaN)"


def random_like_sizes(sizes: Sequence[int], dtype=torch.float32, device="cpu", seed: int = 0,
                      scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
            for n in sizes]
