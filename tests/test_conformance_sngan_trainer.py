"""An SNGAN trainer written the way popular SNGAN repositories write it, and the same trainer
with gankern swapped in as the README says, must train identically in float64: every loss, every
parameter, every u/v buffer, the samples. Both ways repositories apply SN are covered: torch's
parametrization (torch.nn.utils.parametrizations.spectral_norm -> gk.spectral_norm) and the
legacy hook (torch.nn.utils.spectral_norm, then gk.convert_spectral_norm(D) after building D).

The recipe (Miyato et al. 2018, as the common PyTorch ports write it): spectral norm on every
layer of D, hinge loss L_D = mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), L_G = -mean(D(G(z))),
Adam(lr 2e-4, betas (0, 0.9)) for both nets, n_dis D steps per G step with G's samples detached,
D's real and fake batches through two separate forwards (two power iterations per D step), D
frozen (requires_grad off) for the G step, G sampled in eval mode at the end.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm as legacy_spectral_norm
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from conftest import backends_for

import gankern as gk
from gankern.ops import spectral_norm as sn_ops
from gankern.testing import rel_error

BACKENDS = backends_for(sn_ops.IMPLEMENTED)
Z_DIM, BATCH = 8, 6


def discriminator(spectral_norm):
    return nn.Sequential(
        spectral_norm(nn.Conv2d(1, 8, 3, 1, 1)), nn.LeakyReLU(0.1),
        spectral_norm(nn.Conv2d(8, 16, 4, 2, 1)), nn.LeakyReLU(0.1),
        spectral_norm(nn.Conv2d(16, 16, 3, 1, 1)), nn.LeakyReLU(0.1),
        nn.Flatten(), spectral_norm(nn.Linear(16 * 4 * 4, 1)))


def generator():
    return nn.Sequential(
        nn.Linear(Z_DIM, 16 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (16, 4, 4)),
        # No bias before BatchNorm: its exact gradient is 0, so Adam would step on rounding noise.
        nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 1, 3, 1, 1), nn.Tanh())


@contextlib.contextmanager
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def real_batches(seed):
    g = torch.Generator().manual_seed(seed)
    while True:  # blobs on an 8x8 canvas in [-1, 1]
        yield torch.tanh(2 * torch.randn(BATCH, 1, 8, 8, generator=g, dtype=torch.float64))


def train_sngan(spectral_norm, g_steps, n_dis, seed=0, convert=lambda net: net):
    """The training script; `spectral_norm` and `convert` are what the swap changes."""
    torch.manual_seed(seed)
    with float64_default():  # SN's 15 warm-up iterations run at registration: in float64 too
        net_G = generator()
        net_D = convert(discriminator(spectral_norm))
    optim_G = torch.optim.Adam(net_G.parameters(), lr=2e-4, betas=(0.0, 0.9))
    optim_D = torch.optim.Adam(net_D.parameters(), lr=2e-4, betas=(0.0, 0.9))
    data = real_batches(seed + 1)
    z_gen = torch.Generator().manual_seed(seed + 2)
    log = []
    for _ in range(g_steps):
        for _ in range(n_dis):
            with torch.no_grad():
                fake = net_G(torch.randn(BATCH, Z_DIM, generator=z_gen, dtype=torch.float64)).detach()
            real = next(data)
            loss_D = F.relu(1.0 - net_D(real)).mean() + F.relu(1.0 + net_D(fake)).mean()
            optim_D.zero_grad()
            loss_D.backward()
            optim_D.step()
        for p in net_D.parameters():
            p.requires_grad_(False)
        z = torch.randn(BATCH * 2, Z_DIM, generator=z_gen, dtype=torch.float64)
        loss_G = -net_D(net_G(z)).mean()
        optim_G.zero_grad()
        loss_G.backward()
        optim_G.step()
        for p in net_D.parameters():
            p.requires_grad_(True)
        log.append((loss_D.detach(), loss_G.detach()))
    net_G.eval()
    net_D.eval()
    with torch.no_grad():
        z = torch.randn(4, Z_DIM, generator=z_gen, dtype=torch.float64)
        samples = net_G(z)
        scores = net_D(samples)
    return log, net_G, net_D, samples, scores


def parametrization_keys(state_dict):
    """Legacy-hook keys (`weight_orig`, `weight_u`, `weight_v`) under the parametrization's names."""
    renamed = {"weight_orig": "parametrizations.weight.original", "weight_u": "parametrizations.weight.0._u",
               "weight_v": "parametrizations.weight.0._v"}
    out = {}
    for key, t in state_dict.items():
        prefix, _, last = key.rpartition(".")
        out[f"{prefix}.{renamed[last]}" if last in renamed else key] = t
    return out


SWAPS = {  # how the repository applies SN -> (its trainer, the trainer with gankern swapped in)
    "parametrizations": lambda backend: (
        dict(spectral_norm=torch_spectral_norm),
        dict(spectral_norm=lambda m: gk.spectral_norm(m, impl=backend))),
    "legacy hook": lambda backend: (
        dict(spectral_norm=legacy_spectral_norm),
        dict(spectral_norm=legacy_spectral_norm,
             convert=lambda d: gk.convert_spectral_norm(d, impl=backend))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("swap", list(SWAPS))
def test_sngan_trainer_with_gankern_swapped_in_equals_torch(swap, backend):
    # The Triton interpreter costs ~30 ms a kernel: a shorter run there, the same checks.
    g_steps, n_dis = (1, 2) if backend == "triton" and not torch.cuda.is_available() else (2, 5)
    theirs, swapped = SWAPS[swap](backend)
    ref = train_sngan(g_steps=g_steps, n_dis=n_dis, **theirs)
    ours = train_sngan(g_steps=g_steps, n_dis=n_dis, **swapped)
    tol = 1e-11  # float64 through a few dozen Adam steps
    for k, what in enumerate(("D", "G")):  # the whole trajectory: G's losses start near 0
        losses_r, losses_o = torch.stack([l[k] for l in ref[0]]), torch.stack([l[k] for l in ours[0]])
        assert rel_error(losses_o, losses_r) <= tol, f"{what} losses"
    for net in (1, 2):
        sd_r, sd_o = parametrization_keys(ref[net].state_dict()), ours[net].state_dict()
        assert sorted(sd_o) == sorted(sd_r)
        for key in sd_r:
            assert rel_error(sd_o[key], sd_r[key]) <= tol, key
    assert rel_error(ours[3], ref[3]) <= tol, "G samples"
    assert rel_error(ours[4], ref[4]) <= tol, "D scores in eval mode"
    torch.manual_seed(0)
    with float64_default():
        untrained = generator()
    assert not torch.equal(untrained[0].weight, ref[1][0].weight), "the run did not train G"
