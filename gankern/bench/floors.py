"""The floor rows' models: a discriminator without SN, and one whose SN is replaced by W·1.

A case's "(floor)" row runs the same work without the piece gankern replaces, so baseline time /
floor time is the most any implementation of that piece could give (the README's ceiling).
For spectral norm there is a second, higher floor: any SN computed layer by layer through
torch's parametrization (which gankern's keeps, for its state_dict contract) pays parametrize's
property, one more tensor and one more autograd node per layer and call, whatever its kernels
cost. The W·1 parametrization pays exactly that and computes nothing else: W·1 is W bit for
bit, so it runs the no-SN function and is checked against the no-SN float64 reference. Grouped
SN (gk.group_spectral_norm: one node per call) is the one way below it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

PARAMETRIZED_FLOOR = "SN as W·1 per layer (parametrize floor)"  # not "(floor)": the ceiling stays no-SN's
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


class TimesOne(nn.Module):
    """W·1: a new tensor equal to W and an autograd node, nothing else."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 1.0


def times_one(model: nn.Module) -> nn.Module:
    """model (without SN) with every Conv/Linear weight parametrized by W·1, in place."""
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            parametrize.register_parametrization(m, "weight", TimesOne())
    return model
