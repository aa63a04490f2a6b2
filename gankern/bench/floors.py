"""The floor rows' models: a discriminator without SN, and one whose SN is a copy of W.

A case's "(floor)" row runs the same work without the piece gankern replaces, so baseline time /
floor time is the most any implementation of that piece could give (the README's ceiling).
For spectral norm there is a second, higher floor: any SN computed layer by layer, kept as a
parametrization (gankern keeps one, for its state_dict contract), reads the weight through it
and makes one more tensor and one more autograd node per layer and call, whatever its kernels
cost. WeightCopy does exactly that and nothing else: a copy of W read the way gankern's SN is
read (spectral_norm_read), whose node hands the gradient through untouched (an SN's backward
computes a dW; this one computes nothing). A copy is W bit for bit, so it runs the no-SN
function and is checked against the no-SN float64 reference. Grouped SN
(gk.group_spectral_norm: one node per call) is the one way below it.

Records before 2026-12-02-cpu-quick-xeon-6 timed W·1 instead (through parametrize's own read).
That was no floor for big layers: torch's backward of a product with a Python scalar runs an
unvectorized loop, 63-133 us more than a copy's on a 128x128x3x3 weight (two runs, one thread,
Xeon).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..nn import spectral_norm_read

PARAMETRIZED_FLOOR = "SN as a copy of W per layer (per-layer floor)"  # not "(floor)": the ceiling stays no-SN's
W_TIMES_ONE_FLOOR = "SN as W·1 per layer (parametrize floor)"  # the same row in older records
PER_LAYER_FLOOR_LABELS = (PARAMETRIZED_FLOOR, W_TIMES_ONE_FLOOR)
# (A module of gankern/bench, not of bench/cases/: every module there is run as an op.)


def unparametrized_state(D) -> dict:
    """D's state_dict with SN's keys mapped to a plain layer's: original -> weight, no u, v."""
    return {k.replace("parametrizations.weight.original", "weight"): v for k, v in D.state_dict().items()
            if not k.endswith(("parametrizations.weight.0._u", "parametrizations.weight.0._v"))}


def without_sn(D, fresh: nn.Module) -> nn.Module:
    """`fresh` (a new module of D's architecture, without SN) holding D's unnormalized weights,
    on D's device and dtype. Built anew and loaded: removing the parametrization from a
    deepcopy would edit the class the copy shares with D (a deepcopy keeps the parametrized
    class torch made for D's layer)."""
    p = next(D.parameters())
    fresh = fresh.to(p.device, p.dtype)
    fresh.load_state_dict(unparametrized_state(D))
    return fresh


class WeightCopy(nn.Module):
    """A new tensor equal to W and one autograd node whose backward passes the gradient on."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.clone()


def weight_copies(model: nn.Module) -> nn.Module:
    """model (without SN) with every Conv/Linear weight parametrized by a copy, read as
    gankern's SN weights are, in place."""
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", WeightCopy())
            spectral_norm_read.install(m, "weight", WeightCopy)
    return model
