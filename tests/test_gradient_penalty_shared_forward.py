"""R1 with the loss on real taken from the penalty's own forward (return_scores=True).

The R1 penalty runs D(real) with real as the differentiated input; a D step that also takes
its loss on real can reuse those scores instead of running D(real) a second time (one D
forward fewer per regularized step). The README recommends it, so its gradients must be the
two-forward step's, in float64, on every backend, through fuse_bias_act too.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import backends_for
from torch import nn

import gankern as gk
from gankern.ops.norm_penalty import IMPLEMENTED

BACKENDS = ["reference"] + [b for b in backends_for(IMPLEMENTED) if b != "reference"]


def critic():
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, 2, 1),
                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 2 * 2, 1))


def two_forward_step(D, real, fake, gamma):
    """The step as written without gankern: loss on D(real) and D(fake), R1 from a third forward."""
    x = real.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    r1 = gamma / 2 * g.flatten(1).pow(2).sum(1).mean()
    return F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean() + r1


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("impl", BACKENDS)
def test_loss_on_r1_scores_equals_the_two_forward_step(impl, fused):
    torch.manual_seed(0)
    D = critic().double()
    D_ours = gk.nn.fuse_bias_act(copy.deepcopy(D), impl=impl) if fused else copy.deepcopy(D)
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    fake = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)

    r1, real_scores = gk.gradient_penalty(D_ours, real, kind="r1", weight=3.0, return_scores=True, impl=impl)
    assert real_scores.shape == (4,) and real_scores.requires_grad
    got = F.softplus(D_ours(fake)).mean() + F.softplus(-real_scores).mean() + r1
    got.backward()
    want = two_forward_step(D, real, fake, 3.0)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for (name, a), b in zip(D_ours.named_parameters(), D.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-14, msg=name)
