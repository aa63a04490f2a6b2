"""gk.nn.BiasAct and gk.nn.fuse_bias_act: the fused bias+activation as a module, and the
converter that puts it into an existing model without changing its function or its checkpoints.

A D written as Conv(bias=True) -> LeakyReLU pays for a separate bias add and activation in
every forward, backward and (for a gradient penalty) double backward, each saving its own
input. fuse_bias_act makes such a layer skip its bias add and replaces the activation module
after it by a DeferredBiasAct that adds *that layer's* bias inside the fused op. The bias stays
registered where it was (`0.bias` stays `0.bias`; activations hold no state), so old checkpoints
load into the fused model and fused checkpoints into the original code, strictly, and an
optimizer built before fusing still holds every parameter.

Only what provably keeps the function is fused: the layer's output must feed the activation and
nothing else. nn.Sequential (its own forward, no hooks) is the one container whose call order is
visible, so pairs are found in the execution order of Sequentials, nested ones flattened (a
Sequential ending in a Conv followed by one starting with a LeakyReLU is a pair). A module's own
forward() may use a layer's output anywhere, so layers called from custom forwards are left.
In Conv -> BatchNorm -> act the conv bias is left: the activation's input is BN's output, and
the conv bias is not the last add before it (in training BN subtracts the batch mean, bias
included); folding the conv into BN would change BN's statistics and its state_dict. BN's own
affine shift *is* the last add (y = x_hat * weight + bias, in training and eval), so
BatchNorm(affine) -> act is fused like a layer: BN computes x_hat * weight with its own
statistics and buffer updates, and the activation adds BN's bias. What was left, and why, is
in the FuseReport.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend
from ..ops.bias_act import bias_act
from ..ops.bias_act.reference import DEFAULT_ALPHA, act_reference

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d)


class BiasAct(nn.Module):
    """y = clamp(act(x + bias) * gain, -clamp, clamp), bias along `dim` (1 for conv, -1 for linear)."""

    def __init__(self, num_channels: Optional[int] = None, act: str = "lrelu", alpha: Optional[float] = None,
                 gain: float = 1.0, clamp: Optional[float] = None, dim: int = 1, bias=True,
                 impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if isinstance(bias, nn.Parameter):
            self.bias = bias
        elif bias is True:
            if not isinstance(num_channels, int) or num_channels < 1:
                raise ValueError(f"num_channels must be a positive int when bias=True, got {num_channels!r}")
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        elif bias is False or bias is None:
            self.register_parameter("bias", None)
        else:
            raise TypeError(f"bias must be a bool or an nn.Parameter, got {type(bias).__name__}")
        self.act, self.alpha, self.gain, self.clamp, self.dim, self.impl = act, alpha, gain, clamp, dim, impl
        # Fail at construction, not at the first forward.
        from ..ops.bias_act import check_bias_act_args

        check_bias_act_args(torch.zeros(1), None, act, alpha, gain, clamp, 0)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias, self.act, self.alpha, self.gain, self.clamp, self.dim, self.impl)

    def extra_repr(self) -> str:
        n = None if self.bias is None else self.bias.shape[0]
        s = f"{n}, act={self.act!r}, dim={self.dim}"
        if self.alpha is not None:
            s += f", alpha={self.alpha}"
        if self.gain != 1.0:
            s += f", gain={self.gain}"
        if self.clamp is not None:
            s += f", clamp={self.clamp}"
        return s


_LOG = logging.getLogger("gankern")
# BatchNorm's affine shift is its last add: y = x_hat * weight + bias, in training and in eval.
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FUSABLE = _LAYERS + _NORMS
_CONV_TRANSPOSE = {nn.ConvTranspose1d: (1, F.conv_transpose1d), nn.ConvTranspose2d: (2, F.conv_transpose2d),
                   nn.ConvTranspose3d: (3, F.conv_transpose3d)}


def _act_of(module: nn.Module):
    """(act, alpha) for an activation module BiasAct computes identically, else None."""
    if type(module) is nn.ReLU:
        return "relu", None
    if type(module) is nn.LeakyReLU:
        return "lrelu", float(module.negative_slope)
    if type(module) is nn.Tanh:
        return "tanh", None
    if type(module) is nn.Sigmoid:
        return "sigmoid", None
    if type(module) is nn.SiLU:
        return "silu", None
    if type(module) is nn.Softplus and module.beta == 1 and module.threshold == 20:
        return "softplus", None
    if type(module) is nn.ELU:
        return "elu", float(module.alpha)
    if type(module) is nn.SELU:
        return "selu", None
    return None


def _torch_layer_class(layer: nn.Module):
    """The torch layer class whose own forward `layer` runs (a parametrized copy such as
    spectral norm's ParametrizedConv2d included), or None for a subclass with its own math."""
    for cls in _LAYERS:
        if isinstance(layer, cls) and type(layer).forward is cls.forward and \
                getattr(type(layer), "_conv_forward", None) is getattr(cls, "_conv_forward", None):
            return cls
    for cls in _NORMS:  # SyncBatchNorm has a forward of its own: not here
        if isinstance(layer, cls) and type(layer).forward is cls.forward and \
                type(layer)._check_input_dim is cls._check_input_dim:
            return cls
    return None


def _batch_norm_without_shift(bn: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """BatchNorm's own forward with its shift (bias) left out: the same statistics, the same
    running-stat and num_batches_tracked updates, then x_hat * weight."""
    bn._check_input_dim(input)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    buffers_used = not bn.training or bn.track_running_stats
    return F.batch_norm(input, bn.running_mean if buffers_used else None,
                        bn.running_var if buffers_used else None, bn.weight, None, batch_stats, factor, bn.eps)


# On the CPU, impl="auto" runs a fused layer pair as the unfused one: the layer adds its own bias
# (inside oneDNN's convolution or addmm) and DeferredBiasAct applies only torch's activation.
# Measured (python scripts/crossover.py gp_dstep, one thread, 2-core EPYC), a WGAN-GP D step at
# batch 16 with gk.gradient_penalty, relative to the unfused D with the hand-written penalty:
# MLP critic 1.10-1.31x unfused vs 0.91-1.09x fused, DCGAN-32 critic 1.19x vs 1.16-1.18x (two
# runs); the trainers bench (5 D steps + G + EMA, 2 threads, 31-41 interleaved runs): MLP 1.02x
# vs 0.90x, DCGAN-32 1.11x vs 1.05x. Per call, the fused op costs two Python autograd nodes
# (~10 us each) where torch's ops cost ~3 us, and since gk.gradient_penalty skips the zero
# second-order pass (train/zero_second_order.py) the fused double backward saves nothing more
# on a CPU. On CUDA, and with an explicit impl, the fused kernels run.
def _plain_on_cpu(x: torch.Tensor, impl: str) -> bool:
    return x.is_cpu and _backend.chosen_by_auto(impl)  # not x.device: it builds a torch.device


def _forward_without_bias(layer: nn.Module, input: torch.Tensor, output_size=None, *,
                          impl: str = "auto") -> torch.Tensor:
    """The layer's own forward, bias left out (the DeferredBiasAct after it adds it); on the
    CPU under impl="auto", the layer's own forward with its bias (see _plain_on_cpu)."""
    if _plain_on_cpu(input, impl):
        # type(layer).forward is the torch class's own (fuse_bias_act checked it, and a
        # parametrization's subclass inherits it); only a transposed conv takes output_size.
        if output_size is not None:
            return type(layer).forward(layer, input, output_size)
        return type(layer).forward(layer, input)
    cls = _torch_layer_class(layer)
    if cls in _NORMS:
        return _batch_norm_without_shift(layer, input)
    if cls is nn.Linear:
        return F.linear(input, layer.weight)
    if cls in _CONV_TRANSPOSE:
        n, conv = _CONV_TRANSPOSE[cls]
        if layer.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {cls.__name__}")
        pad = layer._output_padding(input, output_size, layer.stride, layer.padding, layer.kernel_size,
                                    n, layer.dilation)
        return conv(input, layer.weight, None, layer.stride, layer.padding, pad, layer.groups, layer.dilation)
    return layer._conv_forward(input, layer.weight, None)


def _bias_deferred(layer: nn.Module) -> bool:
    f = layer.__dict__.get("forward")
    return isinstance(f, functools.partial) and f.func is _forward_without_bias


class DeferredBiasAct(BiasAct):
    """A BiasAct whose bias is the one of the layer before it, for a layer fuse_bias_act made
    skip its bias add. The bias is read from the layer at every call and is not registered
    here, so it keeps its one state_dict key and any later write to it (load_state_dict, .to(),
    an optimizer) is seen."""

    def __init__(self, layer: nn.Module, layer_name: str, act: str, alpha: Optional[float], dim: int,
                 impl: str = "auto", home: Optional[tuple] = None):
        nn.Module.__init__(self)  # not BiasAct's: it would register a bias of its own
        # References, not children: no second state_dict key. home = (the layer's parent, its key).
        self.__dict__["layer"] = layer
        self.__dict__["home"] = home
        self.layer_name = layer_name
        self.act, self.alpha, self.gain, self.clamp, self.dim, self.impl = act, alpha, 1.0, None, dim, impl

    @property
    def bias(self):
        return self.layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A converter that later replaces the layer by a new module holding the same bias
        # Parameter (nn.SyncBatchNorm.convert_sync_batchnorm, LoRA or quantization wrappers) would
        # make the bias count twice; a layer whose forward was restored, not at all. Refuse both.
        home = self.home
        if home is not None and home[0]._modules.get(home[1]) is not self.layer:
            raise RuntimeError(f"the layer {self.layer_name!r} whose bias this DeferredBiasAct adds was "
                               "replaced after fuse_bias_act (e.g. by convert_sync_batchnorm): its new "
                               "module adds the bias itself; run such conversions before fuse_bias_act")
        if not _bias_deferred(self.layer):
            raise RuntimeError(f"the layer {self.layer_name!r} adds its bias again (its forward was "
                               "restored after fuse_bias_act), so this DeferredBiasAct would add it twice")
        if _plain_on_cpu(x, self.layer.forward.keywords.get("impl", "auto")):
            # The layer added its bias (_forward_without_bias): torch's activation only.
            alpha = DEFAULT_ALPHA.get(self.act, 0.0) if self.alpha is None else self.alpha
            return act_reference(x, self.act, alpha)
        return super().forward(x)

    def extra_repr(self) -> str:
        s = f"bias of {self.layer_name!r}, act={self.act!r}, dim={self.dim}"
        return s + (f", alpha={self.alpha}" if self.alpha is not None else "")


@dataclass
class FuseReport:
    """What fuse_bias_act did: `fused` pairs as (layer name, activation name, act), and every
    layer with a bias it `left` unfused as (layer name, reason)."""

    fused: list = field(default_factory=list)
    left: list = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fuse_bias_act: fused {len(self.fused)}, left {len(self.left)} layer(s) with a bias"]
        lines += [f"  fused {layer} + {act_name} -> {act}" for layer, act_name, act in self.fused]
        lines += [f"  left  {layer}: {why}" for layer, why in self.left]
        return "\n".join(lines)


def _runs_children_in_order(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _inlinable(m: nn.Module) -> bool:
    """A Sequential whose children run one after another with nothing observing in between."""
    return _runs_children_in_order(m) and not _has_hooks(m)


def _execution_order(seq: nn.Module, prefix: str):
    """[(qualified name, parent module, key in parent, module)] in the order seq runs them,
    nested plain Sequentials flattened and nn.Identity dropped (it passes its input on)."""
    out = []
    for key, child in seq._modules.items():
        if child is None:
            continue
        name = f"{prefix}.{key}" if prefix else key
        if _inlinable(child):
            out += _execution_order(child, name)
        elif type(child) is not nn.Identity:
            out.append((name, seq, key, child))
    return out


def _describe(m: nn.Module) -> str:
    return type(m).__name__


def fuse_bias_act(model: nn.Module, impl: str = "auto", *, return_report: bool = False):
    """In place: every Linear/Conv(Transpose)/BatchNorm layer with a bias whose output goes straight into
    a supported activation module (found in the execution order of nn.Sequential containers,
    nested ones included) stops adding its bias, and the activation becomes a DeferredBiasAct
    that adds it inside the fused bias_act. Same function, same parameters, same state_dict keys.

    Supported activations: ReLU, LeakyReLU, Tanh, Sigmoid, SiLU, Softplus (beta 1, threshold
    20), ELU, SELU. Returns model, or (model, FuseReport) with return_report=True; the report
    is also logged (logger "gankern", INFO): each pair fused, each layer with a bias left and why.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(return_report, bool):
        raise TypeError(f"return_report must be a bool, got {type(return_report).__name__}")
    # The name is checked now, before anything changes; whether it runs on the model's device is
    # checked by bias_act at the first forward, as for BiasAct.
    if not isinstance(impl, str):
        raise TypeError(f"impl must be a str, got {type(impl).__name__}")
    if impl != "auto" and impl not in _backend.BACKENDS + _backend.TEST_BACKENDS:
        raise ValueError(f"impl must be 'auto' or one of {_backend.BACKENDS}, got {impl!r}")
    entries = list(model.named_modules(remove_duplicate=False))
    registrations: dict[int, int] = {}
    parent_of: dict[int, nn.Module] = {}
    for name, m in entries:
        registrations[id(m)] = registrations.get(id(m), 0) + 1
        for child in m._modules.values():
            if child is not None:
                parent_of.setdefault(id(child), m)

    report = FuseReport()
    handled: set[int] = set()
    # Roots: Sequentials that run their children in order and are not themselves flattened into
    # a parent Sequential's order.
    roots = [(name, seq) for name, seq in model.named_modules() if _runs_children_in_order(seq) and not (
        _inlinable(seq) and _runs_children_in_order(parent_of.get(id(seq), nn.Module())))]
    for name, seq in roots:
        order = _execution_order(seq, name)
        for i, (lname, lparent, lkey, layer) in enumerate(order):
            if not isinstance(layer, _FUSABLE) or getattr(layer, "bias", None) is None or id(layer) in handled:
                continue
            handled.add(id(layer))
            nxt = order[i + 1] if i + 1 < len(order) else None
            why = _why_not(layer, nxt, registrations, seq)
            if why:
                report.left.append((lname, why))
                continue
            aname, aparent, akey, act_module = nxt
            act, alpha = _act_of(act_module)
            dim = -1 if isinstance(layer, nn.Linear) else 1
            layer.forward = functools.partial(_forward_without_bias, layer, impl=impl)
            aparent._modules[akey] = DeferredBiasAct(layer, lname, act, alpha, dim, impl, (lparent, lkey))
            report.fused.append((lname, aname, act))
    # Layers with a bias outside any Sequential's visible order.
    for name, m in model.named_modules():
        if isinstance(m, _FUSABLE) and getattr(m, "bias", None) is not None and id(m) not in handled \
                and not _bias_deferred(m):
            parent = parent_of.get(id(m))
            where = _describe(parent) if parent is not None else "the caller"
            report.left.append((name or "<model>", f"called from {where}.forward(), whose use of its "
                                                    "output is not visible (only nn.Sequential orders are)"))
    _LOG.info("%s", report)
    return (model, report) if return_report else model


def _why_not(layer: nn.Module, nxt, registrations, seq) -> Optional[str]:
    """Why `layer` followed by `nxt` in seq's order cannot be fused, or None if it can."""
    if _bias_deferred(layer):
        return "already fused"
    if _torch_layer_class(layer) is None:
        return f"{_describe(layer)} overrides the torch layer's forward: its math is its own"
    if "forward" in layer.__dict__:
        return "its forward is replaced on the instance (a hook library?): left as it is"
    if registrations[id(layer)] > 1:
        return f"registered {registrations[id(layer)]} times (shared): every use would lose its bias"
    # Forward pre-hooks (legacy hook-based spectral norm, weight norm) run before the forward
    # and see the same input and module; forward and backward hooks would see the output
    # without its bias.
    if layer._forward_hooks or layer._backward_hooks or getattr(layer, "_backward_pre_hooks", None):
        return "has forward or backward hooks, which would see its output without the bias"
    if nxt is None:
        return f"last module run by its {_describe(seq)}: what uses its output is not visible"
    act_module = nxt[3]
    if isinstance(act_module, nn.modules.batchnorm._NormBase):
        return (f"followed by {_describe(act_module)}, not an activation: the activation's input is "
                "the norm's output, and this bias is not the last add before it (BN subtracts the "
                "batch mean, this bias included); the norm's own shift is fused where it can be")
    if _has_hooks(act_module):
        return f"the {_describe(act_module)} after it has hooks, which would see a changed input"
    if _act_of(act_module) is None:
        if type(act_module) is nn.Softplus:
            return "followed by Softplus with beta/threshold other than torch's default (1, 20)"
        return f"followed by {_describe(act_module)}, not a supported activation"
    return None
