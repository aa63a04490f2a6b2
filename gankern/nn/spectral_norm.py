"""gk.spectral_norm and gk.convert_spectral_norm: a drop-in for torch's spectral norm, fused.

Why a parametrization of our own instead of torch's: torch.nn.utils.parametrizations.spectral_norm
spends about a dozen small kernels per layer per training forward (two mat-vecs, two
normalizations, two clones, a third mat-vec and a dot for sigma, the division) and as many in the
backward; for the small layers of a GAN discriminator that is launch- and dispatch-bound.
Here one fused op runs the power iteration (one pass over W per iteration, sigma = ||W^T u||
for free) and one fused op divides W by sigma, with an analytic backward
dW = G/sigma - (<G, W>/sigma^2) u v^T. In eval mode the normalized weight is cached and
reused until the weight or the u/v buffers change (version counters), so inference pays nothing.

Everything users can observe is torch's: the parametrization is registered through
torch.nn.utils.parametrize, so the state_dict keys are the same
(`parametrizations.weight.original`, `parametrizations.weight.0._u`, `..._v`), the buffers are
drawn from the RNG in the same order, the 15 warm-up iterations and the update order are the
same, and a state_dict moves freely between torch-SN and gankern-SN models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import _backend
from ..ops import spectral_norm as sn_ops
from ..ops.spectral_norm.reference import (power_iteration_reference_, spectral_norm_reference,
                                           to_matrix)

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
WARMUP_ITERATIONS = 15  # torch's


class SpectralNormDimError(ValueError, IndexError):
    """dim out of range: a ValueError like every gankern check, an IndexError like torch's."""


def _check_options(n_power_iterations, eps, impl) -> None:
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int):
        raise TypeError(f"n_power_iterations must be an int, got {type(n_power_iterations).__name__}")
    if n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
    if isinstance(eps, bool) or not isinstance(eps, (float, int)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, got {type(impl).__name__}")


class SpectralNorm(nn.Module):
    """The parametrization: weight -> weight / sigma(weight), sigma by power iteration.

    Same constructor arguments, buffers and behaviour as torch's _SpectralNorm, plus impl.
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12, impl: str = "auto") -> None:
        super().__init__()
        _check_options(n_power_iterations, eps, impl)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a floating tensor, got {weight.dtype}")
        ndim = weight.ndim
        if ndim == 0:
            raise ValueError("weight must have at least 1 dim, got a 0-d tensor")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if dim >= ndim or dim < -ndim:
            raise SpectralNormDimError(f"dim must be in [-{ndim}, {ndim - 1}] for a weight of shape "
                                       f"{tuple(weight.shape)}, got {dim}")
        if weight.numel() == 0:
            raise ValueError(f"weight is empty (shape {tuple(weight.shape)})")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        self.impl = impl
        # Resolve now so an unavailable explicit impl fails at registration, not mid-training.
        _backend.resolve(impl, weight.device, sn_ops.IMPLEMENTED, op="spectral_norm")
        self._cache: tuple | None = None
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
                   impl: str = "auto") -> "SpectralNorm":
        """A parametrization around existing u/v buffers (kept, not copied): no RNG, no warm-up."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.dim, self.eps, self.impl, self._cache, self._plan = dim, eps, impl, None, None
        if u is not None:
            self.n_power_iterations = n_power_iterations
            self.register_buffer("_u", u)
            self.register_buffer("_v", v)
        self.train(training)
        return self

    # -- backend ------------------------------------------------------------------------------
    def _backend_for(self, weight: torch.Tensor) -> str:
        return _backend.resolve(self.impl, weight.device, sn_ops.IMPLEMENTED, op="spectral_norm")

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
        if weight.ndim == 1:
            # No approximation needed for vectors (torch does the same).
            return F.normalize(weight, dim=0, eps=self.eps)
        backend = self._backend_for(weight)
        buffers = self._buffers  # not self._u: nn.Module.__getattr__ costs ~1 us a lookup
        u, v = buffers["_u"], buffers["_v"]
        if backend == "reference":
            return spectral_norm_reference(weight, u, v, self.dim, self.n_power_iterations, self.eps,
                                           self.training)
        if self.training:
            if self._cache is not None:  # nn.Module.__setattr__ costs ~2 us: only when needed
                self._cache = None
            plan = None
            if backend in ("cpu", "cuda") and not torch.compiler.is_compiling():
                plan = self._plan
                if plan is None:
                    plan = self._plan = sn_ops.native_plan(weight, u, v, self.dim)
            return sn_ops.train_forward(weight, u, v, self.dim, self.n_power_iterations, self.eps,
                                        backend, plan)
        return self._eval_forward(weight, backend)

    def _eval_forward(self, weight: torch.Tensor, backend: str) -> torch.Tensor:
        """No power iteration; W/sigma (or sigma alone when a gradient is needed) is cached."""
        needs_grad = torch.is_grad_enabled() and weight.requires_grad
        key = None if torch.compiler.is_compiling() else _version_key(weight, self._u, self._v)
        hit = self._cache if key is not None and self._cache is not None and self._cache[0] == key else None
        if hit is None:
            with torch.no_grad():
                u = self._u.clone(memory_format=torch.contiguous_format)
                v = self._v.clone(memory_format=torch.contiguous_format)
                sigma = sn_ops.sigma(weight, u, v, self.dim, backend)
            hit = (key, sigma, u, v, None)
        if needs_grad:
            out = sn_ops.normalize(weight, hit[2], hit[3], hit[1], self.dim, backend)
            if key is not None:
                self._cache = hit
            return out
        out = hit[4]
        if out is None:
            with torch.no_grad():
                out = sn_ops.normalize(weight, hit[2], hit[3], hit[1], self.dim, backend)
            hit = hit[:4] + (out,)
        if key is not None:
            self._cache = hit
        return out

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def extra_repr(self) -> str:
        n = getattr(self, "n_power_iterations", None)
        return f"dim={self.dim}, n_power_iterations={n}, eps={self.eps}, impl={self.impl!r}"

    def __deepcopy__(self, memo):
        # The eval cache and the plan are keyed on this module's storage; a copy (an EMA of D)
        # starts without them.
        import copy

        replica = self.__class__.__new__(self.__class__)
        memo[id(self)] = replica
        for k, val in self.__dict__.items():
            replica.__dict__[k] = None if k in ("_cache", "_plan") else copy.deepcopy(val, memo)
        return replica


def _version_key(weight, u, v):
    try:
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in (weight, u, v))
    except RuntimeError:  # inference-mode tensors have no version counter: never cache them
        return None


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
    _check_options(n_power_iterations, eps, impl)
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"name: module {type(module).__name__} has no parameter or buffer named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, _CONV_TRANSPOSE) else 0
    parametrize.register_parametrization(module, name,
                                         SpectralNorm(weight, n_power_iterations, dim, eps, impl))
    return module


def convert_spectral_norm(model: nn.Module, impl: str = "auto") -> nn.Module:
    """Replace torch's spectral norm in `model` by gankern's, in place; returns model.

    Converts torch.nn.utils.parametrizations.spectral_norm (the parametrization: state_dict
    keys stay the same) and the legacy hook torch.nn.utils.spectral_norm (`weight_orig`,
    `weight_u`, `weight_v` become the parametrization's `original`, `_u`, `_v`). The weights and
    the u/v vectors are kept (the same tensors), so outputs before and after are equal.
    Note: legacy hook SN updates v before u in training; after conversion the update order is
    the parametrization's (u first), as in torch's own parametrization.
    """
    from torch.nn.utils.parametrizations import _SpectralNorm as TorchSN
    from torch.nn.utils.spectral_norm import SpectralNorm as LegacySN

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, got {type(impl).__name__}")
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for plist in module.parametrizations.values():
                for j, p in enumerate(plist):
                    if isinstance(p, TorchSN):
                        plist[j] = SpectralNorm.from_state(
                            p.dim, p.eps, getattr(p, "n_power_iterations", 1),
                            p._buffers.get("_u"), p._buffers.get("_v"), p.training, impl)
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, LegacySN):
                _convert_legacy(module, key, hook, impl)
    return model


def _convert_legacy(module: nn.Module, key, hook, impl: str) -> None:
    name = hook.name
    original = module._parameters[name + "_orig"]
    u, v = module._buffers[name + "_u"], module._buffers[name + "_v"]
    del module._forward_pre_hooks[key]
    # The legacy state_dict hooks rename keys for the hook layout; they go with the hook.
    for hooks in (module._state_dict_hooks, module._load_state_dict_pre_hooks):
        for k, h in list(hooks.items()):
            target = getattr(h, "hook", h)
            if getattr(target, "fn", None) is hook:
                del hooks[k]
    delattr(module, name)
    del module._parameters[name + "_orig"]
    del module._buffers[name + "_u"]
    del module._buffers[name + "_v"]
    module.register_parameter(name, original)
    sn = SpectralNorm.from_state(hook.dim, hook.eps, hook.n_power_iterations, u, v, module.training, impl)
    # unsafe: the consistency check would run a training forward, i.e. one more power iteration.
    parametrize.register_parametrization(module, name, sn, unsafe=True)
