"""The definition of gankern's spectral norm: torch.nn.utils.parametrizations.spectral_norm's math.

Every function here is written with the same torch calls, in the same order, as torch's
_SpectralNorm, so the reference backend is bit-identical to torch and the fused kernels are
judged against exactly what users of torch's SN get today.

The weight is seen as a matrix W of shape (M, K): row i is index i along `dim`, and the columns
are the remaining dims flattened in order. A contiguous weight is therefore a 3-D array
(A, M, B) with A = prod(shape[:dim]) and B = prod(shape[dim+1:]); element (a, i, b) is W[i, a*B + b].
The kernels use that view, so no permuted copy of the weight is ever made.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def matrix_dims(shape, dim: int) -> tuple[int, int, int]:
    """(A, M, B) of the contiguous 3-D view described in the module docstring."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def to_matrix(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """torch's _reshape_weight_to_matrix: `dim` to the front, then flatten the rest."""
    if dim != 0:
        weight = weight.permute(dim, *(d for d in range(weight.dim()) if d != dim))
    return weight.flatten(1)


@torch.no_grad()
def power_iteration_reference_(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                               n_power_iterations: int, eps: float) -> None:
    """u = normalize(W v), then v = normalize(W^T u), n times, in place (torch's _power_method)."""
    for _ in range(n_power_iterations):
        F.normalize(torch.mv(weight_mat, v), dim=0, eps=eps, out=u)
        F.normalize(torch.mv(weight_mat.H, u), dim=0, eps=eps, out=v)


@torch.no_grad()
def legacy_power_iteration_reference_(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                                      n_power_iterations: int, eps: float) -> None:
    """torch.nn.utils.spectral_norm's (the legacy hook's) order: v = normalize(W^T u) first,
    then u = normalize(W v), n times, in place."""
    for _ in range(n_power_iterations):
        F.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=eps, out=v)
        F.normalize(torch.mv(weight_mat, v), dim=0, eps=eps, out=u)


def sigma_reference(weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sigma = u^T W v, differentiable in W (u and v are constants)."""
    return torch.vdot(u, torch.mv(weight_mat, v))


def spectral_norm_reference(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int,
                            n_power_iterations: int, eps: float, training: bool) -> torch.Tensor:
    """torch's _SpectralNorm.forward for a weight of 2+ dims; updates u, v in place when training."""
    weight_mat = to_matrix(weight, dim)
    if training:
        power_iteration_reference_(weight_mat, u, v, n_power_iterations, eps)
    u = u.clone(memory_format=torch.contiguous_format)
    v = v.clone(memory_format=torch.contiguous_format)
    return weight / sigma_reference(weight_mat, u, v)


def normalize_backward_reference(grad: torch.Tensor, weight: torch.Tensor, u: torch.Tensor,
                                 v: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """dL/dW of W/sigma(W) with sigma = u^T W v: G/sigma - (<G, W>/sigma^2) u v^T."""
    g_mat, w_mat = to_matrix(grad, dim), to_matrix(weight, dim)
    dot = (g_mat * w_mat).sum()
    d_mat = g_mat / sigma - (dot / (sigma * sigma)) * torch.outer(u, v)
    return _from_matrix(d_mat, weight.shape, dim)


def _from_matrix(mat: torch.Tensor, shape, dim: int) -> torch.Tensor:
    """Inverse of to_matrix: back to the weight's shape (contiguous)."""
    if dim == 0:
        return mat.reshape(shape)
    permuted = [shape[dim]] + [s for d, s in enumerate(shape) if d != dim]
    order = list(range(1, dim + 1)) + [0] + list(range(dim + 1, len(shape)))
    return mat.reshape(permuted).permute(order).contiguous()
