"""The definition of gk.ops.norm_penalty and of its analytic backward, in plain PyTorch.

norms[i] = ||grads[i]||_2 over all non-batch dims; penalty = weight * mean((norms - center)^2).
The backward is written out (not left to autograd) because the kernels implement exactly this
formula, including its value where a norm is 0: 1/n is taken as 0 there, so no NaN appears
(the gradient itself is 0 there, as grads[i] is 0).
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit grads are reduced in float32 and their norms/penalty returned in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm_penalty_reference(grads: torch.Tensor, center: float, weight: float):
    acc = acc_dtype(grads.dtype)
    n = torch.linalg.vector_norm(grads.reshape(grads.shape[0], -1).to(acc), ord=2, dim=1)
    return weight * (n - center).pow(2).mean(), n


def safe_inverse(norms: torch.Tensor) -> torch.Tensor:
    return torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)


def norm_penalty_backward_reference(grad_penalty, grad_norms, grads, norms, center: float, weight: float):
    """d/dgrads of (grad_penalty * penalty + <grad_norms, norms>)."""
    b = grads.shape[0]
    inv = safe_inverse(norms)
    s = grad_penalty * (2.0 * weight / b)
    coef = s + inv * (grad_norms - s * center)
    shape = (b,) + (1,) * (grads.dim() - 1)
    return (grads.to(coef.dtype) * coef.reshape(shape)).to(grads.dtype)
