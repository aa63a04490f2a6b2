"""gk.spectral_norm: a drop-in for torch's spectral norm, fused (the converter from torch's own
lives in spectral_norm_convert.py).

Why a parametrization of our own instead of torch's: torch.nn.utils.parametrizations.spectral_norm
spends about a dozen small kernels per layer per training forward (two mat-vecs, two
normalizations, two clones, a third mat-vec and a dot for sigma, the division) and as many in the
backward; for the small layers of a GAN discriminator that is launch- and dispatch-bound.
Here one fused op runs the power iteration (one pass over W per iteration, sigma = ||W^T u||
for free) and one fused op divides W by sigma, with an analytic backward
dW = G/sigma - (<G, W>/sigma^2) u v^T. In eval mode, as in torch, sigma = u^T W v is recomputed
from the stored u, v on every forward (one fused pass over W, then W/sigma). Nothing is cached
across forwards: a cache keyed on version counters served a stale W/sigma after writes through
`.data` (an EMA copy, weight clipping), and any cheaper validity check than reading W can be
fooled the same way, while reading W is already what recomputing sigma costs.

Everything users can observe is torch's: the parametrization is registered through
torch.nn.utils.parametrize, so the state_dict keys are the same
(`parametrizations.weight.original`, `parametrizations.weight.0._u`, `..._v`), the buffers are
drawn from the RNG in the same order, the 15 warm-up iterations and the update order are the
same, and a state_dict moves freely between torch-SN and gankern-SN models. Checkpoints of the
legacy hook (torch.nn.utils.spectral_norm: `weight_orig`, `weight_u`, `weight_v`) load too, through
a load_state_dict pre-hook that renames their keys. Complex weights (torch supports them) run on
the reference backend, which is torch's own math: the fused kernels are real-only.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import _backend
from . import spectral_norm_read
from ..ops import spectral_norm as sn_ops
from ..ops.spectral_norm.reference import (legacy_power_iteration_reference_, power_iteration_reference_,
                                           sigma_reference, spectral_norm_reference, to_matrix)

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
WARMUP_ITERATIONS = 15  # torch's
# An eval forward with grad (sigma from the stored u, v, then W / sigma in the graph) on the CPU
# under impl="auto" runs torch's math below this many weight elements: there the fused path's
# Python autograd Function costs more than torch's three ops save. `python scripts/crossover.py
# sn_eval` (Intel Xeon, one thread, forward + backward): torch / gankern 0.78 at 576 elements,
# 0.89 at 9216, 0.99 at 14400, 1.11 at 20736, 1.90 at 147456. Training forwards and eval under
# no_grad run fused at every size (the fused path is faster there throughout).
EVAL_GRAD_FUSED_FROM = 16384
# A layer converted from torch's legacy hook keeps its v-first order, so its iterations run as
# torch ops and only sigma, W / sigma and the backward are fused; on the CPU under impl="auto"
# it runs wholly as torch's math below this many weight elements. `python scripts/crossover.py
# sn_legacy` (Intel Xeon, one thread, a conv's training forward + backward, torch's hook /
# converted): 0.82 at 576 elements, 0.93 at 20736, 1.01 at 36864, 1.02 at 57600, 1.31 at 82944.
LEGACY_FUSED_FROM = 65536


class SpectralNormDimError(ValueError, IndexError):
    """dim out of range: a ValueError like every gankern check, an IndexError like torch's."""


def _as_int(value, what: str) -> int:
    """An integer argument the way torch takes it: anything with __index__ (np.int64, a 0-d
    integer tensor), never a bool or a float (torch would only fail later, inside range())."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


def _check_options(n_power_iterations, eps, impl) -> tuple[int, float]:
    """Validated (n_power_iterations, eps). torch checks only n_power_iterations > 0 and takes
    any eps; eps = 0 is valid there (F.normalize divides by max(norm, 0)) and here. A negative or
    non-finite eps is refused: torch accepts it but it is never what the caller meant."""
    n_power_iterations = _as_int(n_power_iterations, "n_power_iterations")
    if n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    eps = float(eps)
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite float >= 0, got {eps}")
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, got {type(impl).__name__}")
    return n_power_iterations, eps


class SpectralNorm(nn.Module):
    """The parametrization: weight -> weight / sigma(weight), sigma by power iteration.

    Same constructor arguments, buffers and behaviour as torch's _SpectralNorm, plus impl.
    legacy_order (set by convert_spectral_norm for layers of the legacy hook): a training
    forward updates v before u, as torch.nn.utils.spectral_norm does.
    """

    legacy_order = False  # a class default: modules pickled before it existed read False

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12, impl: str = "auto") -> None:
        super().__init__()
        n_power_iterations, eps = _check_options(n_power_iterations, eps, impl)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if not (weight.is_floating_point() or weight.is_complex()):
            raise TypeError(f"weight must be a floating or complex tensor, got {weight.dtype}")
        ndim = weight.ndim
        if ndim == 0:
            raise ValueError("weight must have at least 1 dim, got a 0-d tensor")
        dim = _as_int(dim, "dim")
        if dim >= ndim or dim < -ndim:
            raise SpectralNormDimError(f"dim must be in [-{ndim}, {ndim - 1}] for a weight of shape "
                                       f"{tuple(weight.shape)}, got {dim}")
        if weight.numel() == 0:
            raise ValueError(f"weight is empty (shape {tuple(weight.shape)})")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        self.impl = impl
        # Resolve now so an unavailable explicit impl fails at registration, not mid-training.
        resolve_backend(impl, weight)
        self._plan = None  # _native.SnPlan of the training forward, made on first use
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            weight_mat = to_matrix(weight, self.dim)
            h, w = weight_mat.size()
            # The same draws, in the same order, as torch: equal RNG state -> equal buffers.
            u = weight_mat.new_empty(h).normal_(0, 1)
            v = weight_mat.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            self._power_method(weight.detach(), WARMUP_ITERATIONS)

    @classmethod
    def from_state(cls, dim: int, eps: float, n_power_iterations: int, u, v, training: bool,
                   impl: str = "auto", legacy_order: bool = False) -> "SpectralNorm":
        """A parametrization around existing u/v buffers (kept, not copied): no RNG, no warm-up."""
        n_power_iterations, eps = _check_options(n_power_iterations, eps, impl)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.dim, self.eps, self.impl, self._plan = _as_int(dim, "dim"), eps, impl, None
        if legacy_order:
            self.legacy_order = True
        if u is not None:
            self.n_power_iterations = n_power_iterations
            self.register_buffer("_u", u)
            self.register_buffer("_v", v)
        self.train(training)
        return self

    # -- backend ------------------------------------------------------------------------------
    def _backend_for(self, weight: torch.Tensor) -> str:
        # Every forward of every layer asks; resolving costs ~2 us warm and several times that
        # from a cold cache. The answer depends only on impl, GANKERN_IMPL, the weight's device
        # and whether it is complex, so it is kept per layer for the last such key. Triton's
        # usability on a CPU also depends on TRITON_INTERPRET: never kept.
        key = (self.impl, _backend.env_impl(), weight.is_cpu, weight.get_device(), weight.is_complex())
        memo = self.__dict__.get("_resolved")
        if memo is not None and memo[0] == key:
            backend = memo[1]
        else:
            backend = resolve_backend(self.impl, weight)  # raises for an unusable impl, always
            if backend != "triton":
                self.__dict__["_resolved"] = (key, backend)
        # Under torch.func transforms (grad, vjp, jacrev, vmap) the weight is a functorch
        # wrapper without storage that the fused kernels cannot read, and the fused Functions
        # have no setup_context: torch's own math runs there, as torch's parametrization would
        # (one C call to ask, ~0.1 us).
        return "reference" if sn_ops.functorch_active() else backend

    @torch.no_grad()
    def _power_method(self, weight: torch.Tensor, n_power_iterations: int):
        """n iterations in place on _u, _v; returns (sigma, u, v) copies for the fused path."""
        backend = self._backend_for(weight)
        if backend == "reference":
            power_iteration_reference_(to_matrix(weight, self.dim), self._u, self._v,
                                       n_power_iterations, self.eps)
            return None
        return sn_ops.power_iteration_(weight, self._u, self._v, self.dim, n_power_iterations,
                                       self.eps, backend)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        grouped = self.__dict__.pop("_grouped", None)
        if grouped is not None:
            # W / sigma that group_spectral_norm computed for this layer at the start of the
            # model's forward (its power iteration has run on u, v): taken once, by the first
            # read of the weight; any other read runs the per-layer path below, as torch would.
            grouped_weight, version, out, undo = grouped
            if grouped_weight is weight and self.training:
                if weight._version == version:
                    return out
                # W was written in place since (in D's forward): back to u, v before the grouped
                # iteration, then this layer's own path on the W it reads now.
                undo(self._buffers["_u"], self._buffers["_v"])
            else:
                self.__dict__["_grouped"] = grouped
        if weight.ndim == 1:
            # No approximation needed for vectors (torch does the same).
            return F.normalize(weight, dim=0, eps=self.eps)
        backend = self._backend_for(weight)
        if not self.training and torch.is_grad_enabled() and weight.requires_grad:
            backend = self._torch_math_below(EVAL_GRAD_FUSED_FROM, weight, backend)
        buffers = self._buffers  # not self._u: nn.Module.__getattr__ costs ~1 us a lookup
        u, v = buffers["_u"], buffers["_v"]
        if self.legacy_order and self.training:
            return self._legacy_train_forward(weight, u, v, backend)
        if backend == "reference":
            return spectral_norm_reference(weight, u, v, self.dim, self.n_power_iterations, self.eps,
                                           self.training)
        plan = self._native_plan(weight, u, v, backend)
        if not self.training:
            return sn_ops.eval_forward(weight, u, v, self.dim, backend, plan)
        return sn_ops.train_forward(weight, u, v, self.dim, self.n_power_iterations, self.eps,
                                    backend, plan)

    def _torch_math_below(self, fused_from: int, weight: torch.Tensor, backend: str) -> str:
        """"reference" (torch's math) for a CPU weight under impl="auto" with fewer than
        fused_from elements, where it measured faster than the fused path; else backend."""
        if backend == "cpu" and weight.numel() < fused_from and _backend.chosen_by_auto(self.impl):
            return "reference"
        return backend

    def _native_plan(self, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, backend: str):
        """The validated plan of this layer's fused forward on a native backend, or None (other
        backends, and under torch.compile, which runs the custom ops)."""
        if backend not in sn_ops.NATIVE_PLAN_BACKENDS or torch.compiler.is_compiling():
            return None
        plan = self._plan
        if plan is None or plan.backend != backend:  # GANKERN_IMPL may change under auto
            plan = self._plan = sn_ops.native_plan(weight, u, v, self.dim, backend)
        return plan

    def _legacy_train_forward(self, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                              backend: str) -> torch.Tensor:
        """torch.nn.utils.spectral_norm's training forward: v = normalize(W^T u), then
        u = normalize(W v), n times. The fused kernel iterates u first, so these iterations run
        as torch ops on every backend; sigma, W/sigma and the backward are the fused ones."""
        backend = self._torch_math_below(LEGACY_FUSED_FROM, weight, backend)
        legacy_power_iteration_reference_(to_matrix(weight.detach(), self.dim), u, v,
                                          self.n_power_iterations, self.eps)
        u = u.clone(memory_format=torch.contiguous_format)
        v = v.clone(memory_format=torch.contiguous_format)
        if backend == "reference":
            return weight / sigma_reference(to_matrix(weight, self.dim), u, v)
        return sn_ops.normalize(weight, u, v, sn_ops.sigma(weight, u, v, self.dim, backend), self.dim,
                                backend)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def extra_repr(self) -> str:
        n = getattr(self, "n_power_iterations", None)
        legacy = ", legacy_order=True" if self.legacy_order else ""
        return f"dim={self.dim}, n_power_iterations={n}, eps={self.eps}, impl={self.impl!r}{legacy}"

    # The plan holds launchers bound to this module's storage (validated shapes and pointers):
    # a copy (an EMA of D) or an unpickled module starts without one.
    def __deepcopy__(self, memo):
        import copy

        replica = self.__class__.__new__(self.__class__)
        memo[id(self)] = replica
        for k, val in self.__dict__.items():
            replica.__dict__[k] = None if k == "_plan" else copy.deepcopy(val, memo)
        return replica

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plan"] = None
        return state


def resolve_backend(impl: str, weight: torch.Tensor) -> str:
    """The backend of a forward. Complex weights run on the reference backend (torch's math):
    "auto" (and GANKERN_IMPL) means reference for them, an explicit fused backend is refused."""
    if weight.is_complex():
        if impl not in ("auto", "reference"):
            raise ValueError(f"impl={impl!r} cannot run a complex weight ({weight.dtype}): gankern's "
                             "fused spectral-norm kernels are real-only; use impl='auto' or "
                             "'reference' (torch's own math)")
        return "reference"
    return _backend.resolve(impl, weight.device, sn_ops.IMPLEMENTED, op="spectral_norm")


class _LegacyCheckpointKeys:
    """load_state_dict pre-hook of a module with gankern SN on `name`: a checkpoint of torch's
    legacy hook SN (torch.nn.utils.spectral_norm) is renamed to the parametrization's keys:
    `<name>_orig` -> `parametrizations.<name>.original`, `<name>_u` / `<name>_v` ->
    `parametrizations.<name>.0._u` / `._v`. Those are the same tensors with the same meaning
    (u of size W.shape[dim], sigma = u^T W v), so a loaded model's eval output equals the legacy
    model's. A checkpoint of the oldest legacy format (before torch 1.0: `<name>` = W/sigma
    stored, no `<name>_v`) gets v derived the way torch's own loader derives it: the
    least-squares solution of W x = u, scaled so that u^T W v equals the stored sigma."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs) -> None:
        old = prefix + self.name
        if old + "_orig" not in state_dict:
            return
        plist = module.parametrizations[self.name] if parametrize.is_parametrized(module, self.name) else None
        if plist is None or not isinstance(plist[0], SpectralNorm):
            return  # not ours (any more): the keys stay and a strict load names them
        sn = plist[0]
        new = f"{prefix}parametrizations.{self.name}."
        if old + "_v" not in state_dict and old in state_dict and old + "_u" in state_dict:
            state_dict[old + "_v"] = _derive_legacy_v(state_dict[old + "_orig"], state_dict.pop(old),
                                                      state_dict[old + "_u"], sn.dim)
        state_dict[new + "original"] = state_dict.pop(old + "_orig")
        for suffix in ("_u", "_v"):
            if old + suffix in state_dict:
                state_dict[f"{new}0.{suffix}"] = state_dict.pop(old + suffix)


@torch.no_grad()
def _derive_legacy_v(weight_orig: torch.Tensor, weight_sn: torch.Tensor, u: torch.Tensor,
                     dim: int) -> torch.Tensor:
    # The old format stored W/sigma instead of v; sigma is the ratio of the two weights.
    w = to_matrix(weight_orig, dim).to(torch.float64)
    sigma = (weight_orig.to(torch.float64) / weight_sn.to(torch.float64)).mean()
    u64 = u.to(torch.float64)
    x = torch.linalg.pinv(w) @ u64
    return (x * (sigma / torch.dot(u64, w @ x))).to(u.dtype)


def register_spectral_norm(module: nn.Module, name: str, sn: SpectralNorm, unsafe: bool = False) -> None:
    """Register `sn` on module.<name>, with the legacy-checkpoint pre-hook and the direct weight
    read (spectral_norm_read.py)."""
    parametrize.register_parametrization(module, name, sn, unsafe=unsafe)
    spectral_norm_read.install(module, name, SpectralNorm)
    accept_legacy_checkpoints(module, name)


def accept_legacy_checkpoints(module: nn.Module, name: str) -> None:
    for h in module._load_state_dict_pre_hooks.values():
        target = getattr(h, "hook", h)  # torch wraps hooks registered with the module
        if isinstance(target, _LegacyCheckpointKeys) and target.name == name:
            return
    module.register_load_state_dict_pre_hook(_LegacyCheckpointKeys(name))


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None, impl: str = "auto") -> nn.Module:
    """Spectral normalization of `module.<name>`; a drop-in for
    torch.nn.utils.parametrizations.spectral_norm (same math, buffers, state_dict keys).

    dim defaults to 0, or 1 for ConvTranspose layers. impl: "auto" | "reference" | "triton" |
    "cuda" | "cpu" (an explicit impl that cannot run on the weight's device raises).
    Returns the module, now parametrized.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    n_power_iterations, eps = _check_options(n_power_iterations, eps, impl)
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"name: module {type(module).__name__} has no parameter or buffer named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, _CONV_TRANSPOSE) else 0
    register_spectral_norm(module, name, SpectralNorm(weight, n_power_iterations, dim, eps, impl))
    return module
