"""gk.convert_spectral_norm: torch's spectral norm in an existing model -> gankern's, in place.

A file of its own because it is the one place that reads torch's SN internals (the
parametrization's _SpectralNorm and the legacy hook's SpectralNorm with its state_dict hooks);
the layer itself (spectral_norm.py) only has to match their behaviour.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from . import spectral_norm_read
from .spectral_norm import SpectralNorm, accept_legacy_checkpoints, register_spectral_norm, resolve_backend
from .spectral_norm_group import group_spectral_norm


def convert_spectral_norm(model: nn.Module, impl: str = "auto", group: bool = True) -> nn.Module:
    """Replace torch's spectral norm in `model` by gankern's, in place; returns model.

    Converts torch.nn.utils.parametrizations.spectral_norm (the parametrization: state_dict
    keys stay the same) and the legacy hook torch.nn.utils.spectral_norm (`weight_orig`,
    `weight_u`, `weight_v` become the parametrization's `original`, `_u`, `_v`). The weights and
    the u/v vectors are kept (the same tensors), so outputs before and after are equal.
    Legacy hook layers keep the legacy update order (v before u in training), so a converted
    model trains exactly like the original, checkpoints aside: it saves the parametrization's
    keys, and still loads the legacy ones.

    group=True (the default) also groups the model's spectral norms into one autograd node per
    training call of `model` (gk.group_spectral_norm: the same results, less overhead per
    layer); pass group=False to keep the per-layer path, or when `model` is not the module
    you call.
    """
    from torch.nn.utils.parametrizations import _SpectralNorm as TorchSN
    from torch.nn.utils.spectral_norm import SpectralNorm as LegacySN

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, got {type(impl).__name__}")
    if not isinstance(group, bool):
        raise TypeError(f"group must be a bool, got {type(group).__name__}")
    # Every replacement is built (and its impl resolved for its weight) before any is made:
    # a bad impl or option raises with the model unchanged.
    replacements, legacy = [], []
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name, plist in module.parametrizations.items():
                for j, p in enumerate(plist):
                    if isinstance(p, TorchSN):
                        sn = SpectralNorm.from_state(
                            p.dim, p.eps, getattr(p, "n_power_iterations", 1),
                            p._buffers.get("_u"), p._buffers.get("_v"), p.training, impl)
                        resolve_backend(impl, plist.original)
                        replacements.append((module, name, plist, j, sn))
        for key, hook in module._forward_pre_hooks.items():
            if isinstance(hook, LegacySN):
                sn = SpectralNorm.from_state(hook.dim, hook.eps, hook.n_power_iterations,
                                             module._buffers[hook.name + "_u"],
                                             module._buffers[hook.name + "_v"], module.training, impl,
                                             legacy_order=True)
                resolve_backend(impl, module._parameters[hook.name + "_orig"])
                legacy.append((module, key, hook, sn))
    for module, name, plist, j, sn in replacements:
        plist[j] = sn
        accept_legacy_checkpoints(module, name)
        spectral_norm_read.install(module, name, SpectralNorm)
    for module, key, hook, sn in legacy:
        _convert_legacy(module, key, hook, sn)
    if group and (replacements or legacy):
        group_spectral_norm(model)
    return model


def _convert_legacy(module: nn.Module, key, hook, sn: SpectralNorm) -> None:
    name = hook.name
    original = module._parameters[name + "_orig"]
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
    # unsafe: the consistency check would run a training forward, i.e. one more power iteration.
    register_spectral_norm(module, name, sn, unsafe=True)
