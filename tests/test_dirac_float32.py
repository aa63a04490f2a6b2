"""Issue 13 item 2: the float32 Dirac GAN (Mescheder et al. 2018) with the zero-centered WGAN-GP
converges on every backend, through the denormal range, without one non-finite value.

Setting of the report: D(x) = psi * x (linear, no bias), G = theta, real data a point mass at 0,
(theta, psi) = (1, 1), alternating SGD with lr 0.05, the WGAN loss plus
gk.gradient_penalty(kind="wgan-gp", center=0, weight=1), all in float32. The penalty pulls psi
to 0, so its input-gradient norms |psi| shrink by ~4% a step: they turn denormal at step ~2,200
and reach the last denormals (~1e-44) by step ~2,600, where rounding holds them. The cpu backend
produced a non-finite D gradient at step 2,206 (1/n of a denormal norm overflowed).

The reference and cpu backends run all 10,000 steps (~7 and ~10 s of CPU time on a 2-core CPU).
Interpreted Triton costs ~19 ms of CPU a step (10,000 steps would take over 3 minutes) and the
CUDA host harness (cuda_sim) ~2x the cpu backend, so those two run the window that matters: from
the cpu run's exact state at step 2,150 (norms ~3e-38, still normal) through the whole denormal
descent to step 2,600, where the state sits on its last denormals (~1e-44) and stays there for
the rest of the run. GANKERN_SLOW=1, or a GPU (compiled Triton, real CUDA), runs the full
10,000 steps on every backend.
"""

import os

import pytest
import torch
from conftest import DEVICE, backends_for

import gankern as gk
from gankern.ops.norm_penalty import IMPLEMENTED

STEPS = 10_000
LR = 0.05
WINDOW = (2_150, 2_600)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
SLOW = os.environ.get("GANKERN_SLOW") == "1"
IMPLS = ["reference"] + [b for b in backends_for(IMPLEMENTED) if b != "reference"]


def train(impl, steps, start=None, snapshot_at=None):
    """Alternating SGD on the Dirac GAN; returns (theta, psi) after every step and, if asked, the
    full state (theta, psi, generator state) after step `snapshot_at`."""
    D = torch.nn.Linear(1, 1, bias=False).to(DEVICE)
    theta = torch.nn.Parameter(torch.ones(1, device=DEVICE))
    gen = torch.Generator().manual_seed(0)
    first = 0
    with torch.no_grad():
        D.weight.fill_(1.0)
        if start is not None:
            first, t0, p0, gen_state = start
            theta.copy_(t0)
            D.weight.copy_(p0)
            gen.set_state(gen_state)
    real = torch.zeros(2, 1, device=DEVICE)
    path, snapshot = [], None
    for step in range(first, first + steps):
        fake = theta.expand(2, 1).detach()
        loss_d = D(fake).mean() - D(real).mean()  # WGAN critic loss
        loss_d = loss_d + gk.gradient_penalty(lambda x: D(x).squeeze(1), real, fake, kind="wgan-gp",
                                              center=0.0, weight=1.0, generator=gen, impl=impl)
        (g_psi,) = torch.autograd.grad(loss_d, D.weight)
        assert torch.isfinite(loss_d) and torch.isfinite(g_psi).all(), (
            f"{impl}: non-finite D loss/gradient at step {step} (theta={theta.item():.3e}, "
            f"psi={D.weight.item():.3e})")
        with torch.no_grad():
            D.weight -= LR * g_psi
        (g_theta,) = torch.autograd.grad(-D(theta.expand(2, 1)).mean(), theta)
        assert torch.isfinite(g_theta).all(), f"{impl}: non-finite G gradient at step {step}"
        with torch.no_grad():
            theta -= LR * g_theta
        path.append((theta.item(), D.weight.item()))
        if step + 1 == snapshot_at:
            snapshot = (step + 1, theta.detach().clone(), D.weight.detach().clone(), gen.get_state())
    return path, snapshot


@pytest.fixture(scope="module")
def cpu_run():
    """The full run on the native CPU backend (or the reference where it is not built), with the
    state at the start of the window the interpreted Triton run resumes from."""
    impl = "cpu" if "cpu" in IMPLS else "reference"
    return impl, *train(impl, STEPS, snapshot_at=WINDOW[0])


def _assert_converged(path, impl):
    theta, psi = path[-1]
    assert abs(theta) < 1e-3 and abs(psi) < 1e-3, f"{impl}: ended at theta={theta:.3e}, psi={psi:.3e}"


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_dirac_gan_zero_centered_gp_converges(impl, cpu_run):
    cpu_impl, cpu_path, snapshot = cpu_run
    if impl == cpu_impl:
        path = cpu_path
    elif ((impl == "triton" and INTERPRETED) or impl == "cuda_sim") and not SLOW:
        path, _ = train(impl, WINDOW[1] - WINDOW[0], start=snapshot)
        # The window does cross the denormal range: from normal norms to the last denormals.
        tiny = torch.finfo(torch.float32).tiny
        assert abs(path[0][1]) > tiny and 0 < max(abs(v) for v in path[-1]) < 1e-40
    else:
        path, _ = train(impl, STEPS)
        assert len(path) == STEPS
    _assert_converged(path, impl)
