"""gk.gradient_penalty: WGAN-GP, R1, R2 and DRAGAN in one call, double backward included.

The penalty needs the input gradient of D with create_graph=True and a second backward through
that graph. This file owns the parts every trainer gets subtly wrong: the exact point x_hat of
each kind (DESIGN.md §2), the AMP recipe of PyTorch's AMP notes (scale D's output before
autograd.grad, unscale the gradient before the norm), and validation of D's output shape.
The norm and the penalty itself run in gk.ops.norm_penalty (fused kernels with an analytic
backward) on every backend; impl="reference" is the one written in plain PyTorch.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from .._checks import FLOAT_DTYPES, check_tensor
from . import zero_second_order

KINDS = ("wgan-gp", "r1", "r2", "dragan", "r1+r2")
# (center, weight) defaults per kind; r1/r2 use weight/2 as the factor of mean(n^2) (gamma/2).
_DEFAULTS = {"wgan-gp": (1.0, 10.0), "dragan": (1.0, 10.0), "r1": (0.0, 10.0), "r2": (0.0, 10.0),
             "r1+r2": (0.0, 10.0)}


def _check_inputs(real, fake, kind, alpha, generator, scaler, weight, center):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"weight must be a float, got {type(weight).__name__}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight}")
    if center is not None:
        if isinstance(center, bool) or not isinstance(center, (int, float)):
            raise TypeError(f"center must be a float, got {type(center).__name__}")
        if not math.isfinite(center):
            raise ValueError(f"center must be finite, got {center}")
    check_tensor(real, "real", dtypes=FLOAT_DTYPES, allow_empty=False, min_ndim=2)
    if kind in ("wgan-gp", "r2", "r1+r2"):
        if fake is None:
            raise ValueError(f"kind={kind!r} needs fake, got None")
        check_tensor(fake, "fake", dtypes=FLOAT_DTYPES, device=real.device)
        if fake.shape != real.shape:
            raise ValueError(f"fake must have the shape of real {tuple(real.shape)}, got {tuple(fake.shape)}")
        if fake.dtype != real.dtype:
            raise TypeError(f"fake must have the dtype of real ({real.dtype}), got {fake.dtype}")
    if alpha is not None:
        if kind not in ("wgan-gp", "dragan"):
            raise ValueError(f"alpha is only used by 'wgan-gp' and 'dragan', not {kind!r}")
        check_tensor(alpha, "alpha", dtypes=FLOAT_DTYPES, device=real.device)
        ok = (real.shape[0],) + (1,) * (real.dim() - 1)
        if tuple(alpha.shape) not in (ok, (real.shape[0],)):
            raise ValueError(f"alpha must have shape {ok} or {(real.shape[0],)} (one value per sample), "
                             f"got {tuple(alpha.shape)}")
        # One host sync, only when alpha is passed: outside [0, 1] x_hat leaves the segment
        # between real and fake, which is not the penalty of any of these kinds.
        lo, hi = (float(v) for v in torch.aminmax(alpha.detach().float()))
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"alpha must lie in [0, 1] (x_hat = real + alpha * (other - real)), "
                             f"got values in [{lo}, {hi}]")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if scaler is not None and not (hasattr(scaler, "scale") and hasattr(scaler, "get_scale")):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")


def _rand(shape, like: torch.Tensor, generator):
    # Drawn on the generator's device, then moved: a CPU generator stays usable for CUDA inputs.
    gen_device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=like.dtype)
    return u.to(like.device)


def penalty_point(real, fake, kind, alpha=None, generator=None) -> torch.Tensor:
    """x_hat of DESIGN.md §2, detached from whatever produced real and fake."""
    real = real.detach()
    if kind == "r1":
        return real
    if kind == "r2":
        return fake.detach()
    if kind == "r1+r2":  # one batch, one D forward, one double backward for both penalties
        return torch.cat([real, fake.detach()])
    per_sample = (real.shape[0],) + (1,) * (real.dim() - 1)
    a = alpha.reshape(per_sample).to(real.dtype) if alpha is not None else _rand(per_sample, real, generator)
    if kind == "wgan-gp":
        other = fake.detach()
    else:  # dragan: a perturbed copy of real, 0.5 * std(real) * U(0,1) noise per element
        other = real + 0.5 * real.std() * _rand(real.shape, real, generator)
    return real + a * (other - real)


def batch_statistics_layers(D) -> list:
    """Names of D's layers that normalize with statistics of the batch they are given
    (BatchNorm in training mode, or without running statistics): over cat([real, fake]) their
    output for a real sample depends on the fakes, so R1 + R2 from one forward is not R1 + R2."""
    if not isinstance(D, nn.Module):
        return []
    return [name or type(m).__name__ for name, m in D.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)]


def _refuse_batch_statistics(D):
    layers = batch_statistics_layers(D)
    if layers:
        raise ValueError(
            f"kind='r1+r2' runs D once over cat([real, fake]), but D normalizes with batch statistics "
            f"({', '.join(layers[:3])}{', ...' if len(layers) > 3 else ''}: BatchNorm in training mode), which "
            f"would mix real and fake samples; use kind='r1' and kind='r2' separately, put D in eval() "
            f"for the penalty, or use a per-sample normalization (GroupNorm, LayerNorm, InstanceNorm)")


def _check_output(out, x_hat, name="D"):
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(out).__name__}")
    b = x_hat.shape[0]
    # (B,), (B, 1) and (B, 1, ..., 1) are one score per sample: the last is what a DCGAN-style
    # conv D returns (the PyTorch DCGAN tutorial's D gives (B, 1, 1, 1) and calls .view(-1)).
    if out.dim() == 0 or out.shape[0] != b or out.numel() != b:
        raise ValueError(f"{name} must return one score per sample, shape ({b},), ({b}, 1) or "
                         f"({b}, 1, ..., 1), got {tuple(out.shape)}")
    if not out.requires_grad:
        raise ValueError(f"{name}'s output does not depend on its input through autograd "
                         f"(called under torch.no_grad, or the input was detached inside D)")


def input_gradient(D: Callable, x_hat: torch.Tensor, scaler=None) -> torch.Tensor:
    """dD(x_hat)/dx_hat with create_graph=True, unscaled per the AMP recipe when scaler is given."""
    return input_gradient_and_scores(D, x_hat, scaler)[0]


def input_gradient_and_scores(D: Callable, x_hat: torch.Tensor, scaler=None, orphans: Optional[list] = None):
    """(dD(x_hat)/dx_hat, D(x_hat)): the scores keep their graph, so a loss on them reuses this
    forward (R3GAN's loss and R1 + R2 are all taken at real and fake). With a list `orphans`,
    the all-zero second-order edges into D's forward graph are pruned (zero_second_order) and
    the parameters that must still get a zero gradient are appended to it."""
    x_hat = x_hat.detach().requires_grad_(True)
    with torch.enable_grad():
        out = D(x_hat)
        _check_output(out, x_hat)
        total = out.sum()
        if scaler is not None and scaler.is_enabled():
            # PyTorch AMP notes: gradients of scaled outputs, then multiply by 1/scale, so
            # small per-sample gradients do not underflow in half precision.
            (g,) = torch.autograd.grad(scaler.scale(total), x_hat, create_graph=True)
            g = g * (1.0 / scaler.get_scale())
        else:
            (g,) = torch.autograd.grad(total, x_hat, create_graph=True)
    if orphans is not None:
        orphans.extend(zero_second_order.prune(out, g, x_hat))
    return g, out


def gradient_penalty(D: Callable, real: torch.Tensor, fake: Optional[torch.Tensor] = None, *,
                     kind: str = "r1", weight: Optional[float] = None, center: Optional[float] = None,
                     alpha: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                     scaler=None, return_norms: bool = False, return_scores: bool = False,
                     impl: str = "auto"):
    """The gradient penalty of D at the point of `kind`; a scalar whose .backward() reaches D.

    kind: "wgan-gp" (x_hat = real + alpha*(fake-real), weight*mean((n-1)^2), weight 10),
          "dragan" (x_hat = real + alpha*(p-real), p = real + 0.5*std(real)*U(0,1), same penalty),
          "r1" / "r2" (x_hat = real / fake, (weight/2)*mean(n^2), weight=gamma=10),
          "r1+r2" (R3GAN: R1 + R2, from ONE D forward over cat([real, fake]) and one double
          backward; D must treat samples independently: BatchNorm in training mode is refused,
          and a batch-coupled layer that cannot be seen (minibatch std) is the caller's to avoid;
          return_norms gives 2B norms, real first).
    n is ||dD(x_hat)/dx_hat|| per sample. `weight` (>= 0) is already inside the returned
    penalty: add it to D's loss as it is, never multiply by lambda again.
    alpha: one value per sample in [0, 1], shape (B,) or (B, 1, ..., 1); alpha = 0 is real,
    alpha = 1 is fake (drawn from U(0, 1) when None). center overrides c (0 gives the
    zero-centered GP on interpolates). generator makes the random draws reproducible;
    scaler=GradScaler applies the AMP recipe; return_norms=True returns (penalty, n), n detached.
    D is called as D(x_hat) and must return one score per sample: (B,), (B, 1) or (B, 1, ..., 1).
    A conditional D takes its condition through a closure: gradient_penalty(lambda x: D(x, y),
    real, fake) (the penalty differentiates with respect to x only; y is the labels of the batch).
    return_scores=True also returns D(x_hat), flattened to (B,) ((2B,) for r1+r2, real first)
    with its graph: a loss on these scores reuses the penalty's forward, so with kind="r1+r2" a
    relativistic D step costs ONE forward of D over cat([real, fake]) for loss, R1 and R2:
        gp, s = gradient_penalty(D, real, fake, kind="r1+r2", weight=g, return_scores=True)
        d_loss = F.softplus(s[B:] - s[:B]).mean() + gp
    Return order: penalty, then norms (if asked), then scores (if asked).
    real and fake are detached: the penalty regularizes D, never G.
    """
    _check_inputs(real, fake, kind, alpha, generator, scaler, weight, center)
    c_default, w_default = _DEFAULTS[kind]
    c = float(c_default if center is None else center)
    w = float(w_default if weight is None else weight)
    # r1/r2: (gamma/2) * mean over B. r1+r2: (gamma/2) * (mean_B real + mean_B fake), which is
    # gamma * mean over the 2B rows of the concatenated batch.
    factor = w / 2 if kind in ("r1", "r2") else w
    if kind == "r1+r2":
        _refuse_batch_statistics(D)
    from ..ops.norm_penalty import norm_penalty_resolved, resolve_backend

    backend = resolve_backend(impl, real.device)  # raises before D runs if impl is unusable
    x_hat = penalty_point(real, fake, kind, alpha, generator)
    orphans: list = []
    g, scores = input_gradient_and_scores(D, x_hat, scaler, orphans)
    # The pruned parameters get their exact zero gradient from the penalty's own node.
    penalty, n = norm_penalty_resolved(g, c, factor, backend, zero_grad_to=orphans)
    out = (penalty,) + ((n.detach(),) if return_norms else ()) + ((scores.reshape(-1),) if return_scores else ())
    return out if len(out) > 1 else penalty
