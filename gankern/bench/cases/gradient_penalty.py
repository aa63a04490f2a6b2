"""Gradient-penalty benchmark: one full discriminator step (loss + penalty + backward) for
WGAN-GP and R1, the step every GP-regularized GAN repeats.

Models: a DCGAN-style 64x64 D (4x4 stride-2 convs 64..512, LeakyReLU 0.2; batch 64) and the
SNGAN "standard CNN" 32x32 D (Miyato et al. 2018: 3x3/4x4 convs 64..512, LeakyReLU 0.1),
both plain nn.Sequential as people write them. Compared on identical weights and inputs:
  torch                the hand-written recipe: autograd.grad(create_graph=True), norm, pow, mean
  gankern (auto)       gk.gradient_penalty(D) with gk.nn.fuse_bias_act(D), both with their defaults
  gankern[b]           gk.gradient_penalty(impl=b) with gk.nn.fuse_bias_act(D, impl=b): fused
                       bias+activation (first and second order) and the fused norm penalty
  gankern[b] GP only   gk.gradient_penalty(impl=b) on the unfused D: what the penalty op alone buys
                       (the fused norm, and the zero second-order pass it skips)
  gankern (auto), loss on the R1 scores
                       R1 only: the README's recipe, the loss on real taken from the penalty's
                       forward (return_scores=True): one D forward fewer per step
Each result (every D parameter gradient and the loss) is checked against the same step run
in float64 before it is timed. fp32 and bf16 autocast.

R1 + R2 (R3GAN, issue 17): the D step (rsgan loss + both zero-centered penalties), timed on the
same weights as two separate penalties (two D forwards, two double backwards; the baseline, as
gankern[b] r1 + r2 and as the hand-written torch recipe), as gk.gradient_penalty(kind="r1+r2")
(one forward over cat([real, fake]), one double backward), and with the loss taken from that
forward's scores too (return_scores=True: one D forward in all). Goal: >= 1.3x over two penalties.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from ... import _backend
from ...nn.bias_act import fuse_bias_act
from ...ops.norm_penalty import IMPLEMENTED
from ...testing import rel_error
from ...train.gradient_penalty import gradient_penalty
from ..case import Case, Impl


def dcgan_d64(ch: int = 64) -> nn.Sequential:
    c = [3, ch, 2 * ch, 4 * ch, 8 * ch]
    layers = []
    for a, b in zip(c[:-1], c[1:]):
        layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, nn.Conv2d(c[-1], 1, 4, 1, 0), nn.Flatten())


def sngan_cnn_d32() -> nn.Sequential:
    spec = [(3, 64, 3, 1), (64, 64, 4, 2), (64, 128, 3, 1), (128, 128, 4, 2), (128, 256, 3, 1),
            (256, 256, 4, 2), (256, 512, 3, 1)]
    layers = []
    for cin, cout, k, s in spec:
        layers += [nn.Conv2d(cin, cout, k, s, 1), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 4 * 4, 1))


def plain_penalty(D, real, fake, kind, alpha):
    """The recipe as users write it (WGAN-GP paper / Mescheder et al. R1)."""
    if kind == "wgan-gp":
        x = (real + alpha.view(-1, 1, 1, 1) * (fake - real)).detach().requires_grad_(True)
    else:
        x = real.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    n = g.flatten(1).norm(2, dim=1)
    return 10.0 * ((n - 1.0) ** 2).mean() if kind == "wgan-gp" else 5.0 * (n ** 2).mean()


def _loss(D, real, fake, kind):
    if kind == "wgan-gp":
        return D(fake).mean() - D(real).mean()
    return F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()


def make_case(name, factory, res, batch, kind, device, autocast, seed=0) -> Case:
    torch.manual_seed(seed)
    base = factory().to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    real = torch.randn(batch, 3, res, res, generator=gen).to(device)
    fake = torch.randn(batch, 3, res, res, generator=gen).to(device)
    alpha = torch.rand(batch, generator=gen).to(device)
    amp_dtype = torch.bfloat16

    def step(D, penalty=None, total=None):
        """One D step: the case's loss + penalty(D), or total(D) (a whole loss of its own)."""
        params = list(D.parameters())

        def run():
            D.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
                loss = total(D) if total else _loss(D, real, fake, kind).float() + penalty(D).float()
            loss.backward()
            return [loss.detach()] + [p.grad for p in params]
        return run

    def torch_penalty(D):
        return plain_penalty(D, real, fake, kind, alpha)

    def gk_penalty(backend):
        return lambda D: gradient_penalty(D, real, fake, kind=kind, alpha=alpha if kind == "wgan-gp" else None,
                                          impl=backend)

    ref = {}

    def reference():
        if "out" not in ref:
            D64 = copy.deepcopy(base).double()
            r64, f64, a64 = real.double(), fake.double(), alpha.double()
            D64.zero_grad(set_to_none=True)
            loss = _loss(D64, r64, f64, kind) + plain_penalty(D64, r64, f64, kind, a64)
            loss.backward()
            ref["out"] = [loss.detach()] + [p.grad for p in D64.parameters()]
        return ref["out"]

    def error(out):
        return rel_error(out, reference())

    def loss_on_r1_scores(D):
        """R1 with the loss on real taken from the penalty's forward (the README's recipe):
        one D forward fewer than the case's loss + penalty."""
        r1, real_scores = gradient_penalty(D, real, kind="r1", return_scores=True)
        return (F.softplus(D(fake)).mean() + F.softplus(-real_scores).mean()).float() + r1.float()

    impls = [Impl("torch", run=step(copy.deepcopy(base), torch_penalty), is_baseline=True),
             # What the README tells a user to write: both calls with their defaults (on a CPU,
             # auto runs the fused pairs unfused: measured faster there; see nn/bias_act.py).
             Impl("gankern (auto)", run=step(fuse_bias_act(copy.deepcopy(base)), gk_penalty("auto")))]
    if kind == "r1":
        impls.append(Impl("gankern (auto), loss on the R1 scores",
                          run=step(fuse_bias_act(copy.deepcopy(base)), total=loss_on_r1_scores)))
    for backend in _backend.available(IMPLEMENTED, device):
        if backend == "reference" or (backend == "triton" and device.type == "cpu"):
            continue  # the reference is the torch row; interpreted Triton is a test vehicle
        fused = fuse_bias_act(copy.deepcopy(base), impl=backend)
        impls.append(Impl(f"gankern[{backend}]", run=step(fused, gk_penalty(backend))))
        impls.append(Impl(f"gankern[{backend}] GP only", run=step(copy.deepcopy(base), gk_penalty(backend))))
    label = "bf16 autocast" if autocast else "fp32"
    return Case(op="gradient_penalty", name=f"{name} D step + {kind}, {label}, batch {batch}", impls=impls,
                # fp32: plain PyTorch itself lands near 2e-4 on the DCGAN R1 step (five convs'
                # double backward), so 1e-3 separates rounding from a wrong result.
                error=error, tolerance=3e-2 if autocast else 1e-3,
                params={"model": name, "kind": kind, "batch": batch, "resolution": res, "precision": label},
                min_rounds=9)  # a ~150 ms D step: the quick budget fits only 5 rounds


def make_r1r2_case(name, factory, res, batch, device, seed=0, gamma=10.0) -> Case:
    """D step = relativistic loss (R3GAN's) + R1 + R2 + backward, fp32."""
    torch.manual_seed(seed)
    base = factory().to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    real = torch.randn(batch, 3, res, res, generator=gen).to(device)
    fake = torch.randn(batch, 3, res, res, generator=gen).to(device)

    def loss_of(D, r, f):
        return F.softplus(-(D(r) - D(f))).mean()

    def plain_r(D, x):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        return gamma / 2 * g.flatten(1).pow(2).sum(1).mean()

    def step(D, penalty):
        params = list(D.parameters())

        def run():
            D.zero_grad(set_to_none=True)
            loss = loss_of(D, real, fake) + penalty(D)
            loss.backward()
            return [loss.detach()] + [p.grad for p in params]
        return run

    def one_forward_step(D, backend):
        """The loss from the penalty's own scores (return_scores): one D forward in all."""
        params = list(D.parameters())

        def run():
            D.zero_grad(set_to_none=True)
            gp, s = gradient_penalty(D, real, fake, kind="r1+r2", weight=gamma, return_scores=True, impl=backend)
            loss = F.softplus(-(s[:batch] - s[batch:])).mean() + gp
            loss.backward()
            return [loss.detach()] + [p.grad for p in params]
        return run

    ref = {}

    def reference():
        if "out" not in ref:
            D64 = copy.deepcopy(base).double()
            r64, f64 = real.double(), fake.double()
            D64.zero_grad(set_to_none=True)
            loss = loss_of(D64, r64, f64) + plain_r(D64, r64) + plain_r(D64, f64)
            loss.backward()
            ref["out"] = [loss.detach()] + [p.grad for p in D64.parameters()]
        return ref["out"]

    impls = [Impl("torch R1 + R2 (two passes)", run=step(copy.deepcopy(base), lambda D: plain_r(D, real) + plain_r(D, fake)))]
    for backend in _backend.available(IMPLEMENTED, device):
        if backend == "reference" or (backend == "triton" and device.type == "cpu"):
            continue

        def two(D, b=backend):
            return (gradient_penalty(D, real, kind="r1", weight=gamma, impl=b)
                    + gradient_penalty(D, real, fake, kind="r2", weight=gamma, impl=b))

        def one(D, b=backend):
            return gradient_penalty(D, real, fake, kind="r1+r2", weight=gamma, impl=b)

        impls.append(Impl(f"gankern[{backend}] r1 + r2 (two passes)", run=step(copy.deepcopy(base), two),
                          is_baseline=not any(i.is_baseline for i in impls)))
        impls.append(Impl(f"gankern[{backend}] r1+r2 (one pass)", run=step(copy.deepcopy(base), one)))
        impls.append(Impl(f"gankern[{backend}] r1+r2 + loss, one forward", run=one_forward_step(copy.deepcopy(base), backend)))
    if not any(i.is_baseline for i in impls):
        impls[0].is_baseline = True
    return Case(op="gradient_penalty", name=f"{name} D step + R1+R2 (rsgan), fp32, batch {batch}", impls=impls,
                error=lambda out: rel_error(out, reference()), tolerance=1e-3,
                params={"model": name, "kind": "r1+r2", "batch": batch, "resolution": res, "precision": "fp32"},
                min_rounds=9)


def _bf16_autocast_ok(device: torch.device) -> bool:
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.randn(1, 1, 3, 3, device=device), torch.randn(1, 1, 1, 1, device=device))
        return True
    except Exception:  # noqa: BLE001 - autocast unsupported on this device: fp32 only
        return False


def cases(device: torch.device, quick: bool) -> list[Case]:
    batch = 8 if quick else 64
    # bf16 autocast on a CPU without AVX-512: torch has no oneDNN bf16 convolution there and
    # falls back to aten's slow_conv2d (99% of the step), ~9 s of CPU per batch-8 step and
    # ~70 s per batch-64 step (measured, 1 thread); GANKERN_BENCH_CPU_BF16=1 runs it anyway.
    want_bf16 = device.type == "cuda" or os.environ.get("GANKERN_BENCH_CPU_BF16") == "1"
    precisions = [False] + ([True] if want_bf16 and _bf16_autocast_ok(device) else [])
    out = []
    for autocast in precisions:
        for kind in ("wgan-gp", "r1"):
            out.append(make_case("DCGAN-64", dcgan_d64, 64, batch, kind, device, autocast))
            out.append(make_case("SNGAN-CNN-32", sngan_cnn_d32, 32, batch, kind, device, autocast, seed=5))
    out.append(make_r1r2_case("DCGAN-64", dcgan_d64, 64, batch, device))
    out.append(make_r1r2_case("SNGAN-CNN-32", sngan_cnn_d32, 32, batch, device, seed=5))
    return out
