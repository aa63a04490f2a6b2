"""Spectral-norm benchmark: a GAN discriminator step with torch's SN, gankern's SN and no SN.

SN's cost in a D step is per-layer overhead (power iteration, sigma, W/sigma and its
backward for every weight), so the cases are real discriminators: the SNGAN ResNet D for 32x32
(Miyato et al. 2018; 128 channels) and a DCGAN-style 64x64 D (4x4 stride-2 convs, 64..512
channels). One timed call is D forward + backward in training mode; gankern runs per layer
and grouped (gk.group_spectral_norm: one autograd node per D call). The "no SN" row is the
floor: SN overhead = (time with SN) - (time without). A second case times SN alone: every
layer's W/sigma forward (with the power iteration) and backward, without the convolutions; its
floor runs the same harness (zero_grad, weight reads, one backward call) on plain weights.

All models start from identical weights and u/v (torch and gankern registered from the same
RNG state); the first call of each is checked against torch's SN run in float64 from that state.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from ... import _backend
from ...nn.spectral_norm_group import group_spectral_norm
from ...nn.spectral_norm import spectral_norm as gk_sn
from ...ops.spectral_norm import IMPLEMENTED
from ...testing import rel_error
from ..case import Case, Impl
from ..floors import PARAMETRIZED_FLOOR, weight_copies


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, down, first=False):
        super().__init__()
        self.first, self.down = first, down
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.sc = nn.Conv2d(cin, cout, 1) if (cin != cout or down) else None

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = self.c2(F.relu(self.c1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.sc is not None:
            s = self.sc(F.avg_pool2d(s, 2) if self.first else s)
            if self.down and not self.first:
                s = F.avg_pool2d(s, 2)
        return h + s


class SNGANResNetD32(nn.Module):
    """SNGAN ResNet discriminator for 32x32 (4 blocks, ch channels, global sum pooling)."""

    def __init__(self, ch: int = 128):
        super().__init__()
        self.blocks = nn.Sequential(_ResBlock(3, ch, True, first=True), _ResBlock(ch, ch, True),
                                    _ResBlock(ch, ch, False), _ResBlock(ch, ch, False))
        self.fc = nn.Linear(ch, 1)

    def forward(self, x):
        return self.fc(F.relu(self.blocks(x)).sum(dim=(2, 3)))


class DCGAND64(nn.Module):
    """DCGAN-style discriminator for 64x64: 4x4 stride-2 convs, LeakyReLU(0.2), no BN (SN instead)."""

    def __init__(self, ch: int = 64):
        super().__init__()
        c = [3, ch, 2 * ch, 4 * ch, 8 * ch]
        layers = []
        for a, b in zip(c[:-1], c[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(c[-1], 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(1)


def _apply_sn(model: nn.Module, register) -> nn.Module:
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            register(m)
    return model


def _sn_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def make_cases(name: str, factory, res: int, batch: int, device: torch.device, autocast: bool,
               seed: int = 0) -> list[Case]:
    torch.manual_seed(seed)
    base = factory().to(device)
    torch.manual_seed(seed + 1)
    torch_model = _apply_sn(copy.deepcopy(base), torch_sn)
    ref64 = copy.deepcopy(torch_model).double()
    x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(seed + 2)).to(device)
    dtype = torch.bfloat16 if autocast else torch.float32
    label = "bf16 autocast" if autocast else "fp32"

    def d_step(model, inp=x):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                out = model(inp)
            out.float().mean().backward()
            return out
        return run

    def sn_only(model):
        weights_of = _sn_weights(model)
        cot = [torch.randn(w.shape, generator=torch.Generator().manual_seed(i)).to(device)
               for i, w in enumerate(weights_of)]

        def run():
            model.zero_grad(set_to_none=True)
            ws = _sn_weights(model)
            torch.autograd.backward(ws, cot)
            return [w.detach() for w in ws]
        return run

    refs = {}

    def reference(kind):
        if kind not in refs:
            m = copy.deepcopy(ref64)
            refs[kind] = (d_step(m, x.double())() if kind == "step" else sn_only(m)())
        return refs[kind]

    impls_step, impls_sn = [], []
    for backend in _backend.available(IMPLEMENTED, device):
        if backend == "reference" or (backend == "triton" and device.type == "cpu"):
            continue  # reference is torch's SN (the baseline row); interpreted Triton is not timed
        torch.manual_seed(seed + 1)
        gm = _apply_sn(copy.deepcopy(base), lambda m, b=backend: gk_sn(m, impl=b))
        impls_step.append(Impl(f"gankern[{backend}]", run=d_step(gm)))
        # Grouped (the README's recipe): one autograd node per D call for all layers. Not in SN
        # alone, whose harness reads the weights without calling D (nothing to group there).
        impls_step.append(Impl(f"gankern[{backend}] grouped", run=d_step(group_spectral_norm(copy.deepcopy(gm)))))
        impls_sn.append(Impl(f"gankern[{backend}]", run=sn_only(copy.deepcopy(gm))))
    impls_step.append(Impl("torch SN", run=d_step(copy.deepcopy(torch_model)), is_baseline=True))
    impls_sn.append(Impl("torch SN", run=sn_only(copy.deepcopy(torch_model)), is_baseline=True))
    # The floor: the same D without SN. Its output is a different function, so its check is
    # against the float64 D without SN.
    plain = copy.deepcopy(base)
    per_layer_floor = weight_copies(copy.deepcopy(base))
    plain64 = copy.deepcopy(base).double()
    impls_step.append(Impl("no SN (floor)", run=lambda: ("floor", d_step(plain)())))
    # The floor of any SN computed per layer (bench/floors.py): a copy of W.
    impls_step.append(Impl(PARAMETRIZED_FLOOR, run=lambda: ("floor", d_step(per_layer_floor)())))

    # SN alone's floor: the same harness (zero_grad, read every weight, backward a cotangent
    # into it) on plain weights, so its overhead column is SN's own cost, not autograd's.
    plain_weights = [w.detach().clone() for w in _sn_weights(plain)]
    floor_sn = sn_only(copy.deepcopy(plain))
    impls_sn.append(Impl("no SN (floor)", run=lambda: ("floor", floor_sn())))

    def sn_error(out):
        if isinstance(out, tuple):
            return rel_error(out[1], plain_weights)
        return rel_error(out, reference("sn"))

    def step_error(out):
        if isinstance(out, tuple):
            return rel_error(out[1], d_step(copy.deepcopy(plain64), x.double())())
        return rel_error(out, reference("step"))

    tol = 1e-2 if autocast else 1e-4  # fp32 convs through a whole D; SN itself is far tighter
    params = {"model": name, "batch": batch, "resolution": res, "precision": label,
              "sn_layers": len(_sn_weights(base))}
    return [
        Case(op="spectral_norm", name=f"{name} D fwd+bwd, {label}, batch {batch}", impls=impls_step,
             error=step_error, tolerance=tol, params=params, overhead_over="no SN (floor)",
             min_rounds=21),  # the overhead is a few ms inside ~20 ms: many rounds
        Case(op="spectral_norm", name=f"{name} SN alone (all layers' W/sigma fwd+bwd), {label}",
             impls=impls_sn, error=sn_error, tolerance=1e-5, params=params,
             overhead_over="no SN (floor)"),
    ]


def cases(device: torch.device, quick: bool) -> list[Case]:
    # SN's overhead is per layer, not per sample, so quick mode keeps the models and shrinks the
    # batch; on a CPU it also drops bf16 autocast, whose convolutions take seconds per call there
    # and say nothing about SN.
    batch = 2 if quick else 64
    precisions = (False,) if quick and device.type == "cpu" else (False, True)
    out = []
    for autocast in precisions:
        out += make_cases("SNGAN-ResNet-32", SNGANResNetD32, 32, batch, device, autocast)
        out += make_cases("DCGAN-64", DCGAND64, 64, batch, device, autocast, seed=10)
    return out
