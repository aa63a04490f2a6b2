"""Issue 13: a WGAN-GP trainer written the way the popular PyTorch WGAN-GP repositories write it
(Gulrajani et al. 2017, Algorithm 1), and the same trainer with gk.gradient_penalty swapped in,
stay equal in float64, step for step, on every backend.

The hand-written penalty, in its usual form: interpolates = alpha*real + (1 - alpha)*fake with
one alpha ~ U(0, 1) per sample, requires_grad on the interpolates, autograd.grad of D's outputs
with grad_outputs = ones and create_graph=True, the gradients flattened per sample, and
((norm - 1)^2).mean() * LAMBDA with LAMBDA = 10. The trainer: n_critic = 5 critic steps per
generator step, critic loss D(fake).mean() - D(real).mean() + penalty, generator loss
-D(G(z)).mean(), Adam(lr=1e-4, betas=(0, 0.9)) for both.

Note the convention: those repositories weight *real* by alpha, gankern weights fake
(x_hat = real + alpha*(fake - real)), so the same point is gankern's alpha = 1 - theirs.
"""

import pytest
import torch
from conftest import backends_for
from torch import autograd, nn

import gankern as gk
from gankern.ops.norm_penalty import IMPLEMENTED

LAMBDA = 10.0
N_CRITIC = 5
BATCH, Z_DIM, X_DIM = 16, 4, 2
BACKENDS = ["reference"] + [b for b in backends_for(IMPLEMENTED) if b != "reference"]
# Interpreted Triton and the CUDA host harness cost far more a launch: fewer generator steps.
G_STEPS = {"triton": 1, "cuda_sim": 2}


def calc_gradient_penalty(netD, real_data, fake_data, alpha):
    """The hand-written penalty as the repositories write it."""
    alpha = alpha.expand(real_data.size())
    interpolates = alpha * real_data + ((1 - alpha) * fake_data)
    interpolates = interpolates.detach().requires_grad_(True)
    disc_interpolates = netD(interpolates)
    gradients = autograd.grad(outputs=disc_interpolates, inputs=interpolates,
                              grad_outputs=torch.ones(disc_interpolates.size(), dtype=real_data.dtype),
                              create_graph=True, retain_graph=True, only_inputs=True)[0]
    gradients = gradients.view(gradients.size(0), -1)
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean() * LAMBDA


def gankern_gradient_penalty(impl):
    def penalty(netD, real_data, fake_data, alpha):
        return gk.gradient_penalty(netD, real_data, fake_data, kind="wgan-gp", weight=LAMBDA,
                                   alpha=1 - alpha, impl=impl)
    return penalty


def models():
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(Z_DIM, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, X_DIM)).double()
    netD = nn.Sequential(nn.Linear(X_DIM, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 1)).double()
    return netG, netD


def draws(g_steps):
    """Every random number of the run, drawn up front so both trainers see the same ones."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(g_steps):
        critic = []
        for _ in range(N_CRITIC):
            centers = torch.randint(0, 8, (BATCH,), generator=gen).double() * (2 * torch.pi / 8)
            real = torch.stack([centers.cos(), centers.sin()], 1) * 2 + 0.02 * torch.randn(
                BATCH, X_DIM, generator=gen, dtype=torch.float64)
            critic.append((real, torch.randn(BATCH, Z_DIM, generator=gen, dtype=torch.float64),
                           torch.rand(BATCH, 1, generator=gen, dtype=torch.float64)))
        out.append((critic, torch.randn(BATCH, Z_DIM, generator=gen, dtype=torch.float64)))
    return out


def train(penalty_fn, g_steps):
    netG, netD = models()
    optD = torch.optim.Adam(netD.parameters(), lr=1e-4, betas=(0.0, 0.9))
    optG = torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.0, 0.9))
    history = []
    for critic_draws, z_g in draws(g_steps):
        for p in netD.parameters():
            p.requires_grad_(True)
        for real, z, alpha in critic_draws:
            netD.zero_grad()
            fake = netG(z).detach()
            gp = penalty_fn(netD, real, fake, alpha)
            d_cost = netD(fake).mean() - netD(real).mean() + gp
            d_cost.backward()
            optD.step()
            history.append((d_cost.item(), gp.item()))
        for p in netD.parameters():
            p.requires_grad_(False)  # the repositories freeze D for the generator step
        netG.zero_grad()
        g_cost = -netD(netG(z_g)).mean()
        g_cost.backward()
        optG.step()
        history.append((g_cost.item(),))
    return history, [p.detach().clone() for p in list(netG.parameters()) + list(netD.parameters())]


@pytest.mark.parametrize("impl", BACKENDS)
def test_hand_written_wgan_gp_trainer_equals_gankern_swapped_in(impl):
    g_steps = G_STEPS.get(impl, 4)
    want_hist, want_params = train(calc_gradient_penalty, g_steps)
    got_hist, got_params = train(gankern_gradient_penalty(impl), g_steps)
    assert len(got_hist) == len(want_hist) == g_steps * (N_CRITIC + 1)
    for step, (a, b) in enumerate(zip(got_hist, want_hist)):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-10, atol=1e-12,
                                   msg=lambda m, s=step: f"step {s}: {m}")
    for a, b in zip(got_params, want_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The run did train: D's penalty moved and the parameters left their initial values.
    assert want_hist[0][1] != want_hist[-2][1]
    assert any(not torch.equal(a, b) for a, b in zip(want_params, [p.detach() for m in models() for p in m.parameters()]))
