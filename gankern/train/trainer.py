"""GANTrainer: the thin training loop of DESIGN.md §2 — step, fit, sample, save, load.

Thin on purpose: one D update per step (G every n_critic-th), the loss table of losses.py, the
regularizers of regularizers.py through gk.gradient_penalty, TTUR learning rates, an EMA of G
through gk.EMA, SN through gk.spectral_norm, optional AMP and unrolled D steps. What it adds to
a hand-written loop is the failure handling GAN training needs: a non-finite loss or gradient
stops the run before the optimizer step (so the in-memory state and the last checkpoint stay
good), Ctrl-C/SIGTERM finish the current step and write a checkpoint, and every random draw
comes from generators the checkpoint stores, so a resumed run is bit-identical on the CPU.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch
from torch import nn

from . import checkpoint as ckpt
from .distributed import (RANDOM_PENALTY_KINDS, global_draw, mean_over_ranks,
                          mean_over_ranks_differentiable, sharded_penalty, wrap, world)
from .errors import TrainingDiverged
from .fit_loop import run_fit
from .losses import LOSSES, check_loss, d_loss, g_loss, needs_real_scores_for_g
from .models import infer_z_dim
from .lazy import lazy_optimizer_args
from .regularizers import (InstanceNoise, as_list, from_config, l2_penalty,
                           lazy_interval)

AMP_MODES = {False: None, None: None, "none": None, True: "bf16", "bf16": "bf16", "fp16": "fp16"}


def _lr(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _count(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _adam(module: nn.Module, lr: float, betas) -> torch.optim.Adam:
    """Adam over module's parameters, with torch's fused kernel where it has one for all of them.

    Why: on a CPU the default Adam loops over the parameters in Python, with several kernels
    each; measured (Intel Xeon, 2 threads, the 1.5M-parameter MLP generator of the trainer
    bench): 3.47 ms a step, foreach 3.77 ms, fused 1.10 ms. The same update; the rounding
    differs from the loop's (4e-7 relative after 200 steps there), and a run resumed from its
    checkpoint continues bit for bit either way.
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    params = list(module.parameters())
    supported = _get_fused_kernels_supported_devices()
    fused = all(p.is_floating_point() and p.device.type in supported for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)


def _lr_decay(value):
    if value is None:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 3
    if ok:
        start, end, final = value
        ok = (all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
              and 0 <= start < end and isinstance(final, numbers.Real) and not isinstance(final, bool)
              and math.isfinite(final) and final > 0)
    if not ok:
        raise ValueError(f"lr_decay must be None or (start, end, final) with ints 0 <= start < end "
                         f"and a final factor > 0, got {value!r}")
    return (start, end, float(final))


class GANTrainer:
    """Train G against D. See the module docstring; arguments:

    loss: one of saturating, ns, wgan, hinge, lsgan, rsgan, ragan, gan-qp (losses.py).
    reg: None, a regularizer (gk.train.R1(gamma, every=k), R2, WGANGP, DRAGAN, GANQP), a list of
        them, or a name ("r1", ...). every=k > 1 applies StyleGAN2's lr/beta correction to D.
    g_lr, d_lr, betas: Adam for each network (TTUR: different learning rates).
    n_critic: D steps per G step. ema: decay of the EMA of G (float or schedule; None/0: off).
    instance_noise: std of Gaussian noise added to D's inputs, annealed linearly to 0 over
        noise_anneal_steps. d_l2: weight of sum(p^2) over D's parameters in D's loss.
    amp: False, "bf16" (autocast; True means this) or "fp16" (autocast + GradScaler).
    spectral_norm: wrap every Linear/Conv of D with gk.spectral_norm, grouped (gk.group_spectral_norm).
    unrolled: k > 0 updates G against D unrolled k SGD steps (Metz et al. 2017) via torch.func.
    qp_lambda: lambda of the gan-qp loss. z_dim: latent size (default: G.z_dim, else
        the in_features of G's first layer when it is an nn.Linear).
    batch_size: for fit. seed: seeds the trainer's generators (latents, noise, data batches).
    lr_decay: None, or (start, end, final): both learning rates fall linearly from their values
        at step `start` to final x those values at step `end` (D steps) and stay there. Annealing
        the learning rates at the end of a run shrinks Adam's steady jitter around the modes: it is
        what takes the toy mixtures' high-quality rate above 90% for the raw G, not only the EMA.
    """

    def __init__(self, G: nn.Module, D: nn.Module, loss: str = "hinge", reg=None, g_lr: float = 2e-4,
                 d_lr: float = 2e-4, betas=(0.0, 0.99), n_critic: int = 1, ema=0.999,
                 instance_noise: float = 0.0, noise_anneal_steps: int = 10_000, d_l2: float = 0.0,
                 amp=False, spectral_norm: bool = False, unrolled: int = 0, qp_lambda: float = 10.0,
                 z_dim: Optional[int] = None, batch_size: int = 64, seed: int = 0,
                 ema_start: int = 0, lr_decay=None):
        if not isinstance(G, nn.Module):
            raise TypeError(f"G must be an nn.Module, got {type(G).__name__}")
        if not isinstance(D, nn.Module):
            raise TypeError(f"D must be an nn.Module, got {type(D).__name__}")
        self.loss = check_loss(loss)
        self.regs = as_list(reg)
        self.g_lr = _lr(g_lr, "g_lr")
        self.d_lr = _lr(d_lr, "d_lr")
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.n_critic = _count(n_critic, "n_critic", 1)
        from ..nn.posthoc_ema import PostHocEMA  # ema=gk.PostHocEMA(G, ...): post-hoc EMA profiles

        self.posthoc_ema, ema = (ema, None) if isinstance(ema, PostHocEMA) else (None, ema)
        if self.posthoc_ema is not None and (self.posthoc_ema._model is not G or ema_start != 0):
            raise ValueError("ema=PostHocEMA must be built on this G (gk.PostHocEMA(G, ...)), with ema_start=0")
        if ema is not None and ema is not False and not callable(ema):
            if isinstance(ema, bool) or not isinstance(ema, numbers.Real) or not 0 <= ema < 1:
                raise ValueError(f"ema must be a decay in [0, 1), a schedule, or None; got {ema!r}")
        self.ema_decay = None if ema is None or ema is False or ema == 0 else ema
        self.noise = InstanceNoise(instance_noise, noise_anneal_steps)
        if isinstance(d_l2, bool) or not isinstance(d_l2, numbers.Real) or not d_l2 >= 0:
            raise ValueError(f"d_l2 must be a number >= 0, got {d_l2!r}")
        self.d_l2 = float(d_l2)
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be False, True, 'bf16' or 'fp16'; got {amp!r}")
        self.amp = AMP_MODES[amp]
        self.spectral_norm = bool(spectral_norm)
        self.unrolled = _count(unrolled, "unrolled", 0)
        if self.unrolled and self.amp:
            raise ValueError("unrolled=k does not combine with amp (second derivatives in fp16/bf16)")
        if not (isinstance(qp_lambda, numbers.Real) and qp_lambda > 0):
            raise ValueError(f"qp_lambda must be > 0, got {qp_lambda!r}")
        self.qp_lambda = float(qp_lambda)
        self.batch_size = _count(batch_size, "batch_size", 1)
        self.seed = _count(seed, "seed", 0)
        self.ema_start = _count(ema_start, "ema_start", 0)
        self.lr_decay = _lr_decay(lr_decay)
        self.z_dim = z_dim if z_dim is not None else infer_z_dim(G)
        if isinstance(self.z_dim, bool) or not isinstance(self.z_dim, int) or self.z_dim < 1:
            raise ValueError(f"z_dim must be an int >= 1 (pass z_dim=, give G a z_dim attribute, or "
                             f"start G with an nn.Linear), got {self.z_dim!r}")

        self.G, self.D = G, D
        params = list(G.parameters())
        if not params or not list(D.parameters()):
            raise ValueError("G and D must both have parameters")
        self.device = params[0].device
        if self.spectral_norm:
            self._apply_spectral_norm()
        # Under torchrun: G and D in DistributedDataParallel (distributed.py: options, and how
        # each step gives its reducer one backward); the trainable forwards go through
        # _G_train/_D_train, forwards without gradients and the state through self.G/self.D.
        # DDP starts every rank from rank 0's parameters and buffers (SN u/v).
        self._G_train, self._D_train = wrap(G, self.device), wrap(D, self.device)
        self.sample_shape = self._check_models()

        self.gen = torch.Generator(device=self.device).manual_seed(self.seed)
        self.data_gen = torch.Generator().manual_seed(self.seed + 1)
        self.every = lazy_interval(self.regs)
        d_lr_eff, d_betas = lazy_optimizer_args(self.d_lr, self.betas, self.every)
        self.g_opt = _adam(G, self.g_lr, self.betas)
        self.d_opt = _adam(D, d_lr_eff, d_betas)
        # lr_decay scales these. By index, not group: load_state_dict replaces the group dicts
        # (and their decayed lr, which the next step recomputes from these).
        self._base_lrs = [(opt, [g["lr"] for g in opt.param_groups]) for opt in (self.g_opt, self.d_opt)]
        fp16 = self.amp == "fp16"
        self.g_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16) if fp16 else None
        self.d_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16) if fp16 else None
        self.ema = None
        if self.ema_decay is not None:
            from ..nn import EMA

            self.ema = EMA(G, decay=self.ema_decay, update_after_step=self.ema_start)
        self.ema = self.posthoc_ema or self.ema
        self.step_count = 0  # D steps taken
        # Plain data a caller keeps with the run (`gankern train` stores its options for
        # --resume); saved in checkpoints, never read by the trainer itself.
        self.run_options = None
        self.g_steps = 0

    # -- setup -------------------------------------------------------------------------------
    def _apply_spectral_norm(self):
        from ..nn import group_spectral_norm, spectral_norm

        targets = [m for m in self.D.modules()
                   if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d))
                   and not hasattr(m, "parametrizations")]
        for m in targets:
            spectral_norm(m)
        if targets:
            group_spectral_norm(self.D)  # one autograd node per D call for all its SN layers

    def _check_models(self):
        """One tiny forward of D(G(z)), so a G output that D cannot take fails here, clearly."""
        was_g, was_d = self.G.training, self.D.training
        self.G.eval()
        self.D.eval()
        try:
            with torch.no_grad():
                z = torch.randn(2, self.z_dim, generator=torch.Generator().manual_seed(0)).to(self.device)
                try:
                    x = self.G(z)
                except Exception as e:
                    raise ValueError(f"G cannot take latents of shape (2, {self.z_dim}): "
                                     f"{type(e).__name__}: {e}") from None
                if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] != 2:
                    raise ValueError(f"G must return a (batch, ...) tensor, got "
                                     f"{getattr(x, 'shape', type(x).__name__)}")
                try:
                    out = self.D(x)
                except Exception as e:
                    raise ValueError(f"D cannot take G's output of shape {tuple(x.shape)}: "
                                     f"{type(e).__name__}: {e}") from None
                if not isinstance(out, torch.Tensor) or out.numel() != 2 or out.shape[0] != 2:
                    raise ValueError(f"D must return one score per sample, shape (B,) or (B, 1); "
                                     f"on G's output of shape {tuple(x.shape)} it returned "
                                     f"{getattr(out, 'shape', type(out).__name__)}")
        finally:
            self.G.train(was_g)
            self.D.train(was_d)
        return tuple(x.shape[1:])

    def config(self) -> dict:
        """The constructor arguments, as plain data (checkpoints store this)."""
        ema = self.ema_decay
        return {"loss": self.loss, "reg": [r.config() for r in self.regs], "g_lr": self.g_lr,
                "d_lr": self.d_lr, "betas": list(self.betas), "n_critic": self.n_critic,
                "ema": ema if not callable(ema) else None, "ema_is_schedule": callable(ema),
                "ema_posthoc": self.posthoc_ema.config() if self.posthoc_ema is not None else None,
                "instance_noise": self.noise.sigma, "noise_anneal_steps": self.noise.anneal_steps,
                "d_l2": self.d_l2, "amp": self.amp or False, "spectral_norm": self.spectral_norm,
                "unrolled": self.unrolled, "qp_lambda": self.qp_lambda, "z_dim": self.z_dim,
                "batch_size": self.batch_size, "seed": self.seed, "ema_start": self.ema_start,
                "lr_decay": list(self.lr_decay) if self.lr_decay else None}

    # -- one step ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _z(self, n):
        # Every rank draws the latents of the global batch and keeps its own slice, so N ranks
        # with batch B/N each compute what one process computes with batch B.
        return global_draw(torch.randn, (n, self.z_dim), self.gen, device=self.device)

    def _check_real(self, real):
        if not isinstance(real, torch.Tensor):
            raise TypeError(f"real must be a tensor batch, got {type(real).__name__}")
        if tuple(real.shape[1:]) != self.sample_shape or real.shape[0] < 1:
            raise ValueError(f"real must have shape (B, {', '.join(map(str, self.sample_shape))}) like G's "
                             f"output, got {tuple(real.shape)}")
        if not real.is_floating_point():
            raise TypeError(f"real must be floating point, got {real.dtype}")
        return real.to(self.device, torch.get_default_dtype() if real.dtype != torch.float64 else real.dtype)

    def _finite(self, value: torch.Tensor, what: str):
        v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            raise TrainingDiverged(f"{what} is {v} at step {self.step_count}: training diverged; the "
                                   f"update was not applied (lower the learning rates, add a "
                                   f"regularizer, or disable amp)")
        return v

    def _backward_step(self, loss, opt, scaler, params, what):
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            norm = _grad_norm(params)
            scaler.step(opt)  # skips the step itself when fp16 gradients overflowed
            scaler.update()
            return float(norm)
        loss.backward()  # under DDP this also averages the gradients over ranks
        norm = self._finite(_grad_norm(params), f"{what} gradient norm")
        opt.step()
        return norm

    def _d_step(self, real) -> dict:
        B = real.shape[0]
        step = self.step_count
        with torch.no_grad(), self._autocast():
            fake = self.G(self._z(B))
        fake = fake.to(real.dtype)
        real_in = self.noise(real, step, self.gen)
        fake_in = self.noise(fake, step, self.gen)
        out = {}
        pen = None
        # Every D forward that needs gradients goes through _D_train and into ONE loss, so under
        # DDP the reducer sees one backward per step (distributed.py); lazy steps add a term.
        with self._autocast():
            r = self._D_train(real_in)
            f = self._D_train(fake_in)
            loss = d_loss(self.loss, r, f, real_in, fake_in, qp_lambda=self.qp_lambda)
            total = loss
            for reg in self.regs:
                if reg.uses_scores:
                    total = total + reg.penalty_from_scores(r, f, real_in, fake_in)
            if self.d_l2:
                total = total + self.d_l2 * l2_penalty(self.D)
            lazy = [reg for reg in self.regs if not reg.uses_scores]
            if lazy and step % self.every == 0:
                pen = sum(self._penalty(reg, real_in, fake_in) for reg in lazy)
                total = total + pen * self.every
        # One all-reduce of the step's scalars: the logged values are the global batch's, and a
        # NaN/Inf on any rank stops every rank (no rank left waiting in a collective).
        scalars = [loss, total, r.detach().double().mean(), f.detach().double().mean(),
                   pen if pen is not None else loss]
        values = mean_over_ranks(torch.stack([v.detach().double() for v in scalars]))
        if pen is not None:
            # Under fp16 the GradScaler's first scales overflow the penalty's input
            # gradient by design: the scaler then skips the step and lowers the scale.
            out["reg"] = float(values[4]) if self.d_scaler else self._finite(values[4], "the D regularizer")
        out["d_loss"] = self._finite(values[0], "the D loss")
        if self.d_scaler is None:
            self._finite(values[1], "the D loss with penalties")
        out["d_real"] = float(values[2])
        out["d_fake"] = float(values[3])
        out["d_grad_norm"] = self._backward_step(total, self.d_opt, self.d_scaler,
                                                 list(self.D.parameters()), "D")
        return out

    def _penalty(self, reg, real_in, fake_in):
        # Under torchrun a random penalty point (WGAN-GP, DRAGAN) is drawn for the global batch
        # and sliced, as one process would draw it; one process keeps the regularizer's own call.
        if world()[1] > 1 and getattr(reg, "kind", None) in RANDOM_PENALTY_KINDS:
            return sharded_penalty(reg, self._D_train, real_in, fake_in, generator=self.gen,
                                   scaler=self.d_scaler)
        return reg.penalty(self._D_train, real_in, fake_in, generator=self.gen, scaler=self.d_scaler)

    def _unrolled_D(self, real_in):
        """D's parameters after `unrolled` differentiable SGD steps on the D loss (Metz et al.
        2017), as a functional D; G's gradient then flows through the unrolled updates."""
        from torch.func import functional_call

        params = {n: p.detach().requires_grad_(True) for n, p in self.D.named_parameters()}
        for _ in range(self.unrolled):
            fake_u = self.noise(self._G_train(self._z(real_in.shape[0])), self.step_count, self.gen)
            lu = d_loss(self.loss, functional_call(self.D, params, (real_in,)),
                        functional_call(self.D, params, (fake_u,)), real_in, fake_u, qp_lambda=self.qp_lambda)
            grads = torch.autograd.grad(lu, list(params.values()), create_graph=True)
            # Under torchrun the inner step uses the global batch's gradient, as one process does.
            grads = [mean_over_ranks_differentiable(g) for g in grads]
            lr = self.d_lr * self.lr_factor(self.step_count)
            params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
        return lambda x: functional_call(self.D, params, (x,))

    def _g_step(self, real) -> dict:
        B = real.shape[0]
        # G's step needs no D parameter gradients, and D runs unwrapped: a DDP forward whose
        # parameters get no gradient would leave its reducer waiting for them.
        self.D.requires_grad_(False)
        try:
            real_in = self.noise(real, self.step_count, self.gen)
            D = self._unrolled_D(real_in) if self.unrolled else self.D
            with self._autocast():
                fake = self.noise(self._G_train(self._z(B)), self.step_count, self.gen)
                f = D(fake)
                r = None
                if needs_real_scores_for_g(self.loss):
                    with torch.no_grad():
                        r = D(real_in)
                loss = g_loss(self.loss, r.detach() if r is not None else None, f)
            value = self._finite(mean_over_ranks(loss.detach().double()), "the G loss")
            norm = self._backward_step(loss, self.g_opt, self.g_scaler, list(self.G.parameters()), "G")
        finally:
            self.D.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.G)
        return {"g_loss": value, "g_grad_norm": norm}

    def step(self, real: torch.Tensor) -> dict:
        """One D update on `real` (and a G update every n_critic-th call); returns the step's
        losses, D's mean scores and gradient norms as floats. Raises TrainingDiverged, before
        any update is applied, when a loss or gradient is not finite. Under torchrun, real is
        this rank's slice of the global batch, and the returned values are global."""
        real = self._check_real(real)
        if self.lr_decay is not None:
            factor = self.lr_factor(self.step_count)
            for opt, lrs in self._base_lrs:
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = lr * factor
        out = self._d_step(real)
        self.step_count += 1
        if self.step_count % self.n_critic == 0:
            out.update(self._g_step(real))
            self.g_steps += 1
        out["step"] = self.step_count
        return out

    def lr_factor(self, step: int) -> float:
        """The lr_decay multiplier of both learning rates at D step `step` (1.0 without decay)."""
        if self.lr_decay is None:
            return 1.0
        start, end, final = self.lr_decay
        t = min(max((step - start) / (end - start), 0.0), 1.0)
        return 1.0 + (final - 1.0) * t

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, ema: bool = True, seed: int = 0) -> torch.Tensor:
        """n samples from the EMA generator (ema=True, when there is one) or the raw one, from
        latents of a generator seeded with `seed` (training randomness is untouched)."""
        _count(n, "n", 1)
        model = self.ema.module if ema and self.ema is not None else self.G
        was = model.training
        model.eval()
        try:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            z = torch.randn(n, self.z_dim, generator=gen, device=self.device)
            return torch.cat([model(c) for c in z.split(4096)]).float()
        finally:
            model.train(was)

    # -- fit ---------------------------------------------------------------------------------
    def fit(self, data, steps: int, out_dir=None, every: int = 500, progress: bool = True,
            metrics_fn: Optional[Callable] = None) -> list:
        """Train until step_count == steps (a loaded trainer continues where it stopped).

        data: a (N, ...) tensor (batches drawn with the trainer's generator), an object with
        .sample(n, generator) such as gankern.data.ring(), or an iterable of batches (resume is
        then only as reproducible as the iterable). Every `every` steps, with out_dir set: a
        sample picture out_dir/samples/step_XXXXXXX.png, one JSON line of metrics appended to
        out_dir/metrics.jsonl (means over the interval, plus metrics_fn(trainer) or, for 2-D
        mixtures, modes covered / high-quality rate of raw and EMA G), and out_dir/checkpoint.pt.
        Returns the list of logged records.
        """
        return run_fit(self, data, steps, out_dir=out_dir, every=every, progress=progress,
                       metrics_fn=metrics_fn)

    # -- checkpoints -------------------------------------------------------------------------
    def state_is_finite(self) -> bool:
        tensors = list(self.G.parameters()) + list(self.D.parameters())
        if self.ema is not None:
            tensors += list(self.ema.module.parameters())
        return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())

    def state_dict(self) -> dict:
        from .models import spec_of

        return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "config": self.config(),
                "specs": {"G": spec_of(self.G), "D": spec_of(self.D)},
                "G": self.G.state_dict(), "D": self.D.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict(),
                "g_scaler": self.g_scaler.state_dict() if self.g_scaler else None,
                "d_scaler": self.d_scaler.state_dict() if self.d_scaler else None,
                "step": self.step_count, "g_steps": self.g_steps, "run_options": self.run_options,
                "rng": ckpt.rng_state({"gen": self.gen, "data_gen": self.data_gen})}

    def save(self, path) -> None:
        """Write a checkpoint atomically (temporary file, then rename). Refuses a NaN/Inf state,
        so the previous checkpoint at path survives a diverged run."""
        if not self.state_is_finite():
            raise TrainingDiverged(f"not saving {path}: the model holds NaN/Inf values "
                                   f"(the previous checkpoint, if any, is kept)")
        if world()[0] != 0:  # ranks hold identical state; rank 0 writes it
            return
        ckpt.atomic_save(self.state_dict(), path)

    @classmethod
    def load(cls, path, G: Optional[nn.Module] = None, D: Optional[nn.Module] = None, **overrides):
        """A trainer restored from save(path). G and D are rebuilt when they are gankern's
        built-in models or plain nn.Sequential stacks of torch.nn layers (gankern.train.models
        lists them), else pass freshly constructed ones. overrides
        replace config entries that do not change the state (e.g. an ema schedule callable)."""
        from .models import build

        ck = ckpt.read(path)
        specs = ck.get("specs") or {}
        try:
            G = G if G is not None else build(specs.get("G"))
            D = D if D is not None else build(specs.get("D"))
        except ValueError:
            raise ckpt.CheckpointError(f"checkpoint {path!r} holds custom models: pass G= and D= "
                                       f"(freshly constructed) to GANTrainer.load") from None
        cfg = dict(ck["config"])
        cfg["reg"] = [from_config(c) for c in cfg["reg"]]
        cfg["betas"] = tuple(cfg["betas"])
        if cfg.pop("ema_is_schedule") and "ema" not in overrides:
            raise ckpt.CheckpointError(f"checkpoint {path!r} was trained with an EMA schedule: pass "
                                       f"ema=<the schedule> to GANTrainer.load")
        posthoc = cfg.pop("ema_posthoc", None)
        if posthoc is not None and "ema" not in overrides:
            from ..nn.posthoc_ema import PostHocEMA

            cfg["ema"] = PostHocEMA.from_config(G, posthoc)
        cfg.update(overrides)
        trainer = cls(G, D, **cfg)
        try:
            trainer.load_state_dict(ck)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ckpt.CheckpointError(f"checkpoint {path!r} does not match the models: "
                                       f"{str(e).splitlines()[0]}") from None
        return trainer

    def load_state_dict(self, ck: dict) -> None:
        self.G.load_state_dict(ck["G"])
        self.D.load_state_dict(ck["D"])
        if self.ema is not None:
            if ck["ema"] is None:
                raise ValueError("the checkpoint has no EMA state")
            self.ema.load_state_dict(ck["ema"])
        self.g_opt.load_state_dict(ck["g_opt"])
        self.d_opt.load_state_dict(ck["d_opt"])
        for opt in (self.g_opt, self.d_opt):
            # The saved param groups carry the Adam kernel choice of the run that wrote them
            # (fused or not, on its device); this trainer keeps its own (_adam). A loop-Adam group
            # in a fused optimizer would also refuse GradScaler's fused-only arguments.
            for group in opt.param_groups:
                group["fused"] = opt.defaults["fused"]
        if self.g_scaler is not None and ck["g_scaler"]:
            self.g_scaler.load_state_dict(ck["g_scaler"])
            self.d_scaler.load_state_dict(ck["d_scaler"])
        self.step_count = int(ck["step"])
        self.run_options = ck.get("run_options")
        self.g_steps = int(ck["g_steps"])
        ckpt.set_rng_state(ck["rng"], {"gen": self.gen, "data_gen": self.data_gen})

    def __repr__(self):
        regs = ", ".join(map(repr, self.regs)) or "none"
        return (f"GANTrainer(loss={self.loss!r}, reg={regs}, g_lr={self.g_lr}, d_lr={self.d_lr}, "
                f"n_critic={self.n_critic}, ema={self.ema_decay}, step={self.step_count})")


__all__ = ["GANTrainer", "TrainingDiverged", "LOSSES"]
