"""gk.EMA: the exponential moving average of a generator's weights, for sampling.

GAN training orbits its equilibrium instead of settling on it; the average of the iterates
lands near the centre (the Dirac-GAN analysis, StyleGAN/BigGAN practice). This module keeps
that average with one fused launch per step (gk.ops.ema_update_), no host syncs, an fp32
shadow for bf16/fp16 models, and buffers handled the way GANs need: BN statistics and
spectral-norm u/v vectors are copied, because averaging unit vectors yields non-unit vectors
and a wrong sigma in the EMA model.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Callable, Union

import torch
from torch import nn

from ..ops.ema import PlannedEmaUpdate

HALF = (torch.float16, torch.bfloat16)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def is_sn_vector(name: str, owner_params: set[str]) -> bool:
    """Spectral-norm power-iteration vectors: torch/gankern parametrizations (`..._u`, `..._v`)
    and legacy hook SN (`weight_u` beside a `weight_orig` parameter)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("_u", "_v"):
        return True
    if leaf.endswith("_u") or leaf.endswith("_v"):
        prefix = name[:-2]
        return prefix + "_orig" in owner_params
    return False


class EMA(nn.Module):
    """Exponential moving average of a model's parameters (see module docstring).

    decay: a float in [0, 1), or a schedule callable(step) -> float (gk.ema_schedules).
    update_every: average every k-th update() call (the calls in between only count steps).
    update_after_step: until this many update() calls, the average is a copy of the model.
    buffers: "copy" (default) or "average" (floating buffers averaged; SN u/v still copied).
    shadow_dtype: dtype of the average for 16-bit parameters (None: the parameter's dtype).
    """

    def __init__(self, model: nn.Module, decay: Union[float, Callable[[int], float]] = 0.999,
                 update_every: int = 1, update_after_step: int = 0, buffers: str = "copy",
                 shadow_dtype: torch.dtype | None = torch.float32, impl: str = "auto"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if callable(decay):
            self._check_decay(decay(0), "decay(0)")
        else:
            self._check_decay(decay, "decay")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every must be an int >= 1, got {update_every!r}")
        if isinstance(update_after_step, bool) or not isinstance(update_after_step, int) or update_after_step < 0:
            raise ValueError(f"update_after_step must be an int >= 0, got {update_after_step!r}")
        if buffers not in ("copy", "average"):
            raise ValueError(f"buffers must be 'copy' or 'average', got {buffers!r}")
        if shadow_dtype is not None and shadow_dtype not in (torch.float32, torch.float64, *HALF):
            raise TypeError(f"shadow_dtype must be a floating dtype or None, got {shadow_dtype}")
        if not isinstance(impl, str):
            raise TypeError(f"impl must be a str, got {type(impl).__name__}")
        # A schedule that reproduces another tool (gk.ema_schedules.timm / .ema_pytorch) already
        # holds that tool's warm-up offset and update period: gk.EMA's own must not add to them.
        for name, expected in getattr(decay, "ema_arguments", {}).items():
            given = {"update_every": update_every, "update_after_step": update_after_step}[name]
            if given != expected:
                raise ValueError(f"{name}={given} conflicts with the decay schedule {decay!r}, which "
                                 f"needs {name}={expected} (the schedule already applies it)")
        self.decay = decay
        self.update_every = update_every
        self.update_after_step = update_after_step
        self.buffers = buffers
        self.shadow_dtype = shadow_dtype
        self.impl = impl
        self.step = 0
        source = unwrap(model)
        object.__setattr__(self, "_model", source)  # not a submodule: kept out of state_dict
        self.module = copy.deepcopy(source)
        self.module.eval()
        self.module.requires_grad_(False)
        for p in self.module.parameters():
            if p.is_floating_point():
                p.data = p.data.to(self._shadow_dtype_for(p.dtype))
        self._pairs_cache: dict = {}

    # -- configuration ------------------------------------------------------------------------
    @staticmethod
    def _check_decay(value, name):
        if isinstance(value, torch.Tensor):
            if value.dim() != 0:
                raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
            return
        if isinstance(value, bool) or not isinstance(value, (float, int)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")

    def _shadow_dtype_for(self, dtype: torch.dtype) -> torch.dtype:
        return self.shadow_dtype if self.shadow_dtype is not None and dtype in HALF else dtype

    def current_decay(self):
        """The decay the next averaging update uses."""
        return self.decay(self.step) if callable(self.decay) else self.decay

    # -- pairing of EMA tensors with model tensors ---------------------------------------------
    def _pairs(self, model: nn.Module):
        key = id(model)
        hit = self._pairs_cache.get(key)
        if hit is not None and hit[0]() is model:
            return hit[1]
        ema_params = dict(self.module.named_parameters())
        src_params = dict(model.named_parameters())
        if ema_params.keys() != src_params.keys():
            missing = sorted(set(ema_params) ^ set(src_params))[:5]
            raise ValueError(f"model's parameters do not match the EMA's (differ in {missing})")
        avg_s, avg_p, copy_s, copy_p = [], [], [], []
        for name, s in ema_params.items():
            p = src_params[name]
            if s.shape != p.shape:
                raise ValueError(f"parameter {name}: model has shape {tuple(p.shape)}, EMA {tuple(s.shape)}")
            (avg_s if s.is_floating_point() else copy_s).append(s)
            (avg_p if s.is_floating_point() else copy_p).append(p)
        ema_bufs = dict(self.module.named_buffers())
        src_bufs = dict(model.named_buffers())
        if ema_bufs.keys() != src_bufs.keys():
            missing = sorted(set(ema_bufs) ^ set(src_bufs))[:5]
            raise ValueError(f"model's buffers do not match the EMA's (differ in {missing})")
        buf_avg_s, buf_avg_p = [], []
        for name, s in ema_bufs.items():
            p = src_bufs[name]
            average = (self.buffers == "average" and s.is_floating_point()
                       and not is_sn_vector(name, set(ema_params)) and s.dtype == p.dtype)
            (buf_avg_s if average else copy_s).append(s)
            (buf_avg_p if average else copy_p).append(p)
        pairs = (avg_s + buf_avg_s, avg_p + buf_avg_p, copy_s, copy_p,
                 PlannedEmaUpdate(avg_s + buf_avg_s, avg_p + buf_avg_p, self.impl))
        self._pairs_cache[key] = (weakref.ref(model), pairs)
        return pairs

    # -- the update ----------------------------------------------------------------------------
    # update() runs once per training step, after a forward/backward/optimizer step has evicted
    # every cache, code included; then each Python-level call it makes costs tens of
    # microseconds (measured cold: a `with torch.no_grad()` ~75 us, nn.Module.__setattr__ and the
    # pairs lookup ~30 us each), as much as a tenth of a small G's whole update. So the common
    # case (default model, float decay, native backend) takes only the calls it needs: the
    # averaging kernel ignores grad mode, the step counter is a plain int written past
    # nn.Module.__setattr__, and grad mode is switched off only around the torch copies.
    def update(self, model: nn.Module | None = None) -> None:
        """One EMA step from model (default: the model the EMA was made from)."""
        if model is None:
            pairs = self.__dict__.get("_default_pairs")
            if pairs is None:
                pairs = self.__dict__["_default_pairs"] = self._pairs(self._model)
        else:
            pairs = self._pairs(unwrap(model))
        avg_s, avg_p, copy_s, copy_p, average_ = pairs
        step = self.step
        self.__dict__["step"] = step + 1  # a plain int: nn.Module.__setattr__ has nothing to do
        if step < self.update_after_step:
            self._copy(avg_s, avg_p)
        elif (step - self.update_after_step) % self.update_every == 0:
            decay = self.decay(step) if callable(self.decay) else self.decay
            if type(decay) is not float or not 0.0 <= decay <= 1.0:
                self._check_decay(decay, f"decay({step})")
            average_(1.0 - decay)
        if copy_s:
            self._copy(copy_s, copy_p)

    @staticmethod
    def _copy(dst, src):
        if dst:
            with torch.no_grad():
                torch._foreach_copy_(dst, src)

    # -- using the average ---------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the averaged parameters and buffers into model (cast to its dtypes)."""
        model = self._model if model is None else unwrap(model)
        avg_s, avg_p, copy_s, copy_p, _ = self._pairs(model)
        self._copy(avg_p + copy_p, avg_s + copy_s)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module | None = None):
        """Run model with the averaged weights inside the block; its own come back after."""
        model = self._model if model is None else unwrap(model)
        avg_s, avg_p, copy_s, copy_p, _ = self._pairs(model)
        with torch.no_grad():
            backup = [t.clone() for t in avg_p + copy_p]
            self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                self._copy(avg_p + copy_p, backup)

    # -- checkpoints ---------------------------------------------------------------------------
    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("EMA state_dict is missing its step counter")
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        return (f"decay={self.decay!r}, update_every={self.update_every}, "
                f"update_after_step={self.update_after_step}, buffers={self.buffers!r}, "
                f"shadow_dtype={self.shadow_dtype}, impl={self.impl!r}, step={self.step}")
