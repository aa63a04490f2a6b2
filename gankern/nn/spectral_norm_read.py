"""The weight read of a gk.spectral_norm layer, without parametrize's generic path.

Why: torch.nn.utils.parametrize serves `layer.weight` through a property of the layer's own
(generated) class that calls the ParametrizationList as a module, which looks up its first
entry and `original` through nn.Module.__getattr__, probes for a second entry by catching an
AttributeError, and calls the parametrization as a module again. On a CPU that is ~5 us a read
more than this getter costs, paid by every layer on every call of the model. Measured on the
e2e case's 8-layer width-32 D (Intel Xeon, 2 threads, one forward + backward, 400 interleaved
rounds, three runs): per-layer SN overhead per D call 507-553 us with this read, 548-605 us
with parametrize's (torch's SN: 1207-1312 us); grouped, 450-499 against 472-496 us.

install(layer, name) replaces that property by one whose getter calls SpectralNorm.forward on
the original tensor directly when nothing can tell the difference, and torch's own getter in
every other case:
- the parametrization list holds exactly one gankern SpectralNorm and `original` is a tensor of
  the list (not a multi-tensor parametrization);
- no module hooks on the list or the SpectralNorm, and no global module hooks (module calls run
  those; this path makes no module call);
- not parametrize.cached() (torch's getter caches there), not JIT tracing (it records module
  scopes), not torch.compile (dynamo inlines torch's getter as before).
The class is the one parametrize made for the layer. A deepcopy shares it, and so does the
torch-SN model that convert_spectral_norm converted a copy of: the getter finds each layer's
parametrization through the instance it is given (never a closure), and for torch's own SN it
is torch's getter. remove_parametrizations deletes the property with the rest of it. The
setter stays torch's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module
from torch.nn.utils import parametrize


def _global_hooks_present() -> bool:
    # The dicts nn.Module.__call__ consults for hooks registered on every module.
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks)


def _has_module_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _direct_read(name: str, torch_getter, sn_type: type):
    def read(layer: nn.Module) -> torch.Tensor:
        if not (torch.compiler.is_compiling() or parametrize._cache_enabled
                or torch._C._get_tracing_state() is not None):
            lists = layer._modules.get("parametrizations")
            plist = None if lists is None else lists._modules.get(name)
            if plist is not None and len(plist._modules) == 1 and plist.is_tensor:
                sn = plist._modules["0"]
                original = plist._parameters.get("original")
                if original is None:
                    original = plist._buffers.get("original")
                if (type(sn) is sn_type and original is not None and not _has_module_hooks(plist)
                        and not _has_module_hooks(sn) and not _global_hooks_present()):
                    return sn.forward(original)
        return torch_getter(layer)

    read.gankern_direct_read = True
    read.torch_getter = torch_getter  # for the tests that compare the two
    return read


def install(layer: nn.Module, name: str, sn_type: type) -> None:
    """Give layer.<name>, parametrized by an sn_type (gankern's SpectralNorm, passed in so this
    module imports nothing of the one that uses it), the direct read; idempotent."""
    cls = type(layer)
    prop = cls.__dict__.get(name)
    if not isinstance(prop, property) or getattr(prop.fget, "gankern_direct_read", False):
        return
    setattr(cls, name, property(_direct_read(name, prop.fget, sn_type), prop.fset, prop.fdel, prop.__doc__))
