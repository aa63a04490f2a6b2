"""The definition of gk.ops.norm_penalty and of its analytic backward, in plain PyTorch.

norms[i] = ||grads[i]||_2 over all non-batch dims; penalty = weight * mean((norms - center)^2).
The backward is written out (not left to autograd) because the kernels implement exactly this
formula, including its value where a norm is 0: 1/n is taken as 0 there, so no NaN appears
(the gradient itself is 0 there, as grads[i] is 0).

Range (issue 13): every finite input whose exact result is representable gives a finite, exact
result, whatever its magnitude. torch's own vector_norm squares without scaling, so a float32
row of 1e-39 (or a float64 row of 1e-170) has norm 0 there and a row of 1e20 (1e160) norm inf;
and 1/n of a denormal norm overflows, which made the gradient inf/NaN at the equilibrium of a
zero-centered penalty. So here the norm is m * ||g / m|| with m = max |g| of the row, all in
float64, and the gradient's direction g/n is formed as (g/m) / (n/m), never through 1/n.
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit grads are reduced in float32 and their norms/penalty returned in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scaled_rows(grads: torch.Tensor):
    """(n, m, r) per row: float64 norms n without over/underflow, the row's largest magnitude m
    (1 for a zero or infinite row) and r = ||g/m|| = n/m (1 for a zero row, so (g/m)/r is always
    defined and at most 1 in magnitude)."""
    g = grads.reshape(grads.shape[0], -1).to(torch.float64)
    m = g.abs().amax(dim=1)
    inf_row = torch.isinf(m)
    m = torch.where((m > 0) & ~inf_row, m, 1.0)
    r = torch.linalg.vector_norm(g / m.unsqueeze(1), ord=2, dim=1)
    n = torch.where(inf_row, float("inf"), m * r)  # inf/inf in g/m is not the norm
    return n, m, torch.where(r > 0, r, 1.0)


def mean_square_distance(n64: torch.Tensor, center: float, weight: float) -> torch.Tensor:
    """weight * mean((n - center)^2) in float64; when the squares overflow although the weighted
    mean would not (huge norms, tiny weight), the weight goes inside the square instead."""
    q = weight / n64.shape[0]
    d = n64 - center
    direct = (d * d).sum() * q
    inside = (d * q ** 0.5).pow(2).sum()
    return torch.where(torch.isinf(direct) & ~torch.isinf(inside), inside, direct)


def norm_penalty_reference(grads: torch.Tensor, center: float, weight: float):
    acc = acc_dtype(grads.dtype)
    n, _, _ = scaled_rows(grads)
    return mean_square_distance(n, center, weight).to(acc), n.to(acc)


def safe_inverse(norms: torch.Tensor) -> torch.Tensor:
    return torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)


def ordinary_norms(norms: torch.Tensor) -> torch.Tensor:
    """Rows whose saved norm the backward may use as it is: normal (full precision, 1/n finite)
    and finite. The others (denormal, or beyond the dtype's range) are recomputed in float64."""
    return (norms >= torch.finfo(norms.dtype).tiny) & torch.isfinite(norms)


def _per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((like.shape[0],) + (1,) * (like.dim() - 1))


def unit_rows(grads: torch.Tensor, norms: torch.Tensor):
    """(g64, n64, unit): grads in float64 (same shape and layout), the norms used (the saved ones
    where ordinary, recomputed otherwise; 0 for a zero row) and g/n (0 for a zero row), formed
    without 1/n overflow."""
    g = grads.to(torch.float64)
    n_exact, m, r = scaled_rows(grads)
    ok = ordinary_norms(norms)
    n = torch.where(ok, norms.to(torch.float64), n_exact)
    by_norm = g / _per_row(torch.where(ok, n, 1.0), g)
    by_scale = (g / _per_row(m, g)) / _per_row(r, g)
    return g, n, torch.where(_per_row(ok, g), by_norm, by_scale)


def norm_penalty_backward_reference(grad_penalty, grad_norms, grads, norms, center: float, weight: float):
    """d/dgrads of (grad_penalty * penalty + <grad_norms, norms>) = s*g + (gn - s*c) * g/n,
    s = grad_penalty * 2 * weight / B, computed in float64 and rounded once to grads' dtype."""
    b = grads.shape[0]
    g, _, unit = unit_rows(grads, norms)
    s = grad_penalty.to(torch.float64) * (2.0 * weight / b)
    out = s * g + _per_row(grad_norms.to(torch.float64) - s * center, g) * unit
    return out.to(grads.dtype)
