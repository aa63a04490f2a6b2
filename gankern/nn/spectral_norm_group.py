"""gk.group_spectral_norm: all of a model's spectral norms in one autograd node per forward.

Why: on a CPU, a small layer's fused spectral norm costs less in kernels than in the Python and
autograd machinery around them (a Function call, its node, its Python backward: ~30 of the ~60
us a layer's training forward and backward take in a width-32 SNGAN D). A discriminator call
pays that once per SN layer, three times a training step. Grouped, it is paid once per call:
a forward pre-hook on the model runs every layer's power iteration and W / sigma in one
autograd node (gankern/ops/spectral_norm grouped_train_forward, the same kernels and plans as
the per-layer path) and leaves each layer its W / sigma; the layer's first weight read in that
call takes it. Measured on the 8-layer width-32 D of the e2e case (Intel Xeon, 2 threads, one
D forward + backward, 800 interleaved rounds): SN overhead 0.53 ms per layer, 0.39 ms grouped,
0.28 ms for a W·1 parametrization through parametrize's own read (then the bench's
per-layer floor, gankern/bench/floors.py), 1.03 ms for torch's SN.

What users observe is torch's, exactly as with per-layer SN:
- every read of a layer's weight in training mode runs one power iteration on its u, v (the
  grouped iteration counts as that read's; a second read of the same layer in one call runs
  the per-layer path and iterates again, as torch would);
- a layer the call never read keeps its u, v: the forward hook (always called, exceptions too)
  restores them, and its weight gets no gradient from the call;
- a weight written in place inside the model's forward before its read (its version moved)
  makes the grouped W / sigma stale: the layer undoes the grouped iteration and runs its own
  path on the W it reads; the node refuses a backward after an in-place write, as autograd does;
- eval mode, torch.no_grad, torch.compile, torch.func transforms, the legacy update order and
  backends without a native plan (Triton, reference) run the per-layer path: the hook steps aside.
The list of layers is kept in the model's __dict__, so a deepcopy of the model carries it
(mapped to the copy's layers); layers given SN after grouping run per layer until
group_spectral_norm(model) is called again (which refreshes the list, never adds hooks twice),
and a parametrization removed after grouping is skipped.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..ops import spectral_norm as sn_ops
from .spectral_norm import SpectralNorm

_LAYERS = "_gk_sn_group"  # model.__dict__: [(layer, tensor name, ParametrizationList, SpectralNorm), ...]
_CALLS = "_gk_sn_group_calls"  # model.__dict__: one record per model call in progress


def _sn_parametrizations(model: nn.Module) -> list:
    """(layer, tensor name, ParametrizationList, SpectralNorm) of every gankern SN in model that
    is alone in its parametrization list."""
    found = []
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                if len(plist) == 1 and isinstance(plist[0], SpectralNorm):
                    found.append((module, name, plist, plist[0]))
    return found


def _grouped_layer(layer: nn.Module, name: str, plist, sn: SpectralNorm):
    """(weight, (plan, u, v, n_iter, eps, backend)) when this layer's next read can take a grouped
    W / sigma, else None (it then runs its own path, as without grouping)."""
    if plist[0] is not sn or not sn.training or sn.legacy_order or "_grouped" in sn.__dict__:
        return None
    lists = layer._modules.get("parametrizations")
    if lists is None or lists._modules.get(name) is not plist:  # the parametrization was removed
        return None
    buffers = sn._buffers
    if "_u" not in buffers:  # a 1-D weight: F.normalize, no power iteration
        return None
    weight = plist._parameters.get("original")  # not plist.original: __getattr__ costs ~0.5 us
    if weight is None:
        weight = plist.original  # a buffer (the parametrized tensor was not a Parameter)
    if not weight.is_contiguous():
        return None
    u, v = buffers["_u"], buffers["_v"]
    plan = sn._native_plan(weight, u, v, sn._backend_for(weight))
    if plan is None:
        return None
    return weight, (plan, u, v, sn.n_power_iterations, sn.eps, plan.backend)


class _GroupedPreHook:
    """Forward pre-hook: every eligible layer's power iteration and W / sigma, in one node."""

    def __call__(self, model, args):
        if torch.compiler.is_compiling():
            return None  # the compiled graph runs each layer's custom ops
        calls = model.__dict__.setdefault(_CALLS, [])
        record = []
        calls.append(record)  # first: the forward hook pops one record per call, even if we raise
        if not torch.is_grad_enabled() or sn_ops.functorch_active() or len(calls) > 1:
            return None  # no grad: nothing to group; a nested call of the model runs per layer
        chosen, weights, specs = [], [], []
        for entry in model.__dict__.get(_LAYERS, ()):
            grouped = _grouped_layer(*entry)
            if grouped is not None:
                chosen.append(entry[3])
                weights.append(grouped[0])
                specs.append(grouped[1])
        if not chosen:
            return None
        before = _Snapshot([t for spec in specs for t in spec[1:3]])  # u, v before the iteration
        outs = sn_ops.grouped_train_forward(specs, weights)
        for i, (sn, weight, out) in enumerate(zip(chosen, weights, outs)):
            # The weight's version: a write to W between now and the layer's read (in place, in
            # D's forward) makes this W / sigma stale; the layer then undoes the grouped
            # iteration and runs its own path, on the W it reads, as torch would.
            sn.__dict__["_grouped"] = (weight, weight._version, out, functools.partial(before.restore, i))
        record.append((chosen, specs, before))
        return None


class _GroupedForwardHook:
    """Forward hook (always called): layers that did not read their W / sigma get u, v back."""

    def __call__(self, model, args, result):
        if torch.compiler.is_compiling():
            return None
        calls = model.__dict__.get(_CALLS)
        if not calls:
            return None
        for chosen, specs, before in calls.pop():
            for i, sn in enumerate(chosen):
                if sn.__dict__.pop("_grouped", None) is not None:  # never read: as if not iterated
                    before.restore(i, specs[i][1], specs[i][2])
        return None


class _Snapshot:
    """Copies of the u, v pairs of a grouped call, to undo the iteration of layer i. One flat
    copy when they share dtype and device (the usual case: one allocation instead of two per
    layer), else one copy each; per-layer views are made only when a layer is undone."""

    def __init__(self, tensors: list):
        first = tensors[0]
        if all(t.dtype == first.dtype and t.device == first.device for t in tensors):
            self.flat, self.sizes = torch.cat(tensors), [t.numel() for t in tensors]
        else:
            self.flat, self.sizes = [t.clone() for t in tensors], None

    def restore(self, i: int, u: torch.Tensor, v: torch.Tensor) -> None:
        if self.sizes is not None:  # split once, on the first layer undone
            self.flat, self.sizes = self.flat.split(self.sizes), None
        copies = self.flat
        with torch.no_grad():
            u.copy_(copies[2 * i])
            v.copy_(copies[2 * i + 1])


def group_spectral_norm(model: nn.Module) -> nn.Module:
    """Run all of model's gankern spectral norms (gk.spectral_norm, gk.convert_spectral_norm) in
    one autograd node per training forward of model; returns model, in place.

    Same results, u/v updates and gradients as per-layer SN (and as torch's); cheaper per call
    when the layers are small. Call it on the module you call (the discriminator), after its
    layers got SN; calling it again refreshes its list of layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = _sn_parametrizations(model)
    if not layers:
        raise ValueError("model has no gankern spectral norm layer: register them first with "
                         "gk.spectral_norm(layer) or gk.convert_spectral_norm(model)")
    model.__dict__[_LAYERS] = layers
    if not any(isinstance(h, _GroupedPreHook) for h in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_GroupedPreHook())
        model.register_forward_hook(_GroupedForwardHook(), always_call=True)
    return model
