"""gk.PostHocEMA: choose the EMA length after training (Karras et al. 2024, "EDM2").

The best EMA length of a GAN generator is found only by trying several, and each try used to
mean another training run. Post-hoc EMA tracks K power-function EMA profiles during training
(default sigma_rel 0.05 and 0.10), saves them every `snapshot_every` updates, and afterwards
synthesizes the EMA of any sigma_rel as the least-squares combination of the snapshots
(gankern/nn/power_ema.py has the mathematics). The K profiles are updated by one fused
gk.ops.ema_update_multi_ call per step, which reads each parameter once instead of K times.

Snapshots go to out_dir as ema-snapshot-<step>.pt, each written atomically (temporary file,
fsync, rename, fsync of the directory), so a crash or a full disk keeps every earlier one; with
out_dir=None they stay in memory (and in state_dict()). Parameters are averaged; buffers (BN
statistics, spectral-norm u/v) are copied, as gk.EMA's default does.
"""

from __future__ import annotations

import copy
import glob
import os
import re
import weakref
from typing import Union

import torch
from torch import nn

from .._atomic_io import atomic_torch_save as _atomic_save
from ..ops.ema.multi import PlannedEmaMultiUpdate
from .ema import HALF, unwrap
from .power_ema import check_sigma_rel, power_beta, sigma_rel_to_gamma, solve_coefficients

SNAPSHOT_FORMAT = "gankern-posthoc-ema-snapshot"
SNAPSHOT_VERSION = 1
_SNAPSHOT_NAME = re.compile(r"^ema-snapshot-(\d+)\.pt$")


class SnapshotError(ValueError):
    """A snapshot directory or file that cannot be used for synthesis."""


class PostHocEMA(nn.Module):
    """K power-function EMAs of a model, snapshotted for post-hoc synthesis.

    sigma_rels: 1 to 8 relative lengths in (0, 0.2887); snapshot_every: updates between
    snapshots; out_dir: where snapshots go (None: kept in memory); shadow_dtype: dtype of the
    averages of 16-bit parameters; impl: backend of gk.ops.ema_update_multi_.
    """

    def __init__(self, model: nn.Module, sigma_rels=(0.05, 0.10), snapshot_every: int = 1000,
                 out_dir: Union[str, os.PathLike, None] = None,
                 shadow_dtype: torch.dtype | None = torch.float32, impl: str = "auto"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(sigma_rels, (str, bytes)) or not isinstance(sigma_rels, (list, tuple)) or not 1 <= len(sigma_rels) <= 8:
            raise ValueError(f"sigma_rels must be a tuple of 1 to 8 floats, got {sigma_rels!r}")
        sigma_rels = tuple(check_sigma_rel(s, f"sigma_rels[{i}]") for i, s in enumerate(sigma_rels))
        if len(set(sigma_rels)) != len(sigma_rels):
            raise ValueError(f"sigma_rels must be distinct, got {sigma_rels}")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"snapshot_every must be an int >= 1, got {snapshot_every!r}")
        if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
            raise TypeError(f"out_dir must be a path or None, got {type(out_dir).__name__}")
        if shadow_dtype is not None and shadow_dtype not in (torch.float32, torch.float64, *HALF):
            raise TypeError(f"shadow_dtype must be a floating dtype or None, got {shadow_dtype}")
        if not isinstance(impl, str):
            raise TypeError(f"impl must be a str, got {type(impl).__name__}")
        self.sigma_rels = sigma_rels
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in sigma_rels)
        self.snapshot_every = snapshot_every
        self.out_dir = os.fspath(out_dir) if out_dir is not None else None
        self.shadow_dtype = shadow_dtype
        self.impl = impl
        self.step = 0
        self.snapshots: list[dict] = []  # in memory when out_dir is None
        source = unwrap(model)
        object.__setattr__(self, "_model", source)  # not a submodule: kept out of state_dict
        self.profiles = nn.ModuleList(self._averaged_copy(source) for _ in sigma_rels)
        self._plan_cache: dict = {}

    def _averaged_copy(self, source: nn.Module) -> nn.Module:
        m = copy.deepcopy(source).eval().requires_grad_(False)
        for p in m.parameters():
            if p.dtype in HALF and self.shadow_dtype is not None:
                p.data = p.data.to(self.shadow_dtype)
        return m

    def config(self) -> dict:
        """The constructor arguments other than the model, as plain data."""
        return {"sigma_rels": list(self.sigma_rels), "snapshot_every": self.snapshot_every,
                "out_dir": self.out_dir, "impl": self.impl,
                "shadow_dtype": str(self.shadow_dtype).replace("torch.", "") if self.shadow_dtype else None}

    @classmethod
    def from_config(cls, model: nn.Module, config: dict) -> "PostHocEMA":
        cfg = dict(config)
        dt = cfg.pop("shadow_dtype", "float32")
        return cls(model, shadow_dtype=getattr(torch, dt) if dt else None, **cfg)

    @property
    def module(self) -> nn.Module:
        """The profile with the longest sigma_rel, for sampling during training."""
        return self.profiles[max(range(len(self.sigma_rels)), key=lambda k: self.sigma_rels[k])]

    # -- pairing and the update --------------------------------------------------------------
    def _pairs(self, model: nn.Module):
        hit = self._plan_cache.get(id(model))
        if hit is not None and hit[0]() is model:
            return hit[1]
        src = dict(model.named_parameters())
        mine = [dict(prof.named_parameters()) for prof in self.profiles]
        if mine[0].keys() != src.keys():
            raise ValueError(f"model's parameters do not match the PostHocEMA's (differ in "
                             f"{sorted(set(mine[0]) ^ set(src))[:5]})")
        for n, p in src.items():
            if p.shape != mine[0][n].shape:
                raise ValueError(f"parameter {n}: model has shape {tuple(p.shape)}, PostHocEMA "
                                 f"{tuple(mine[0][n].shape)}")
        avg = [n for n in mine[0] if src[n].is_floating_point()]
        shadows = [[prof[n] for n in avg] for prof in mine]
        params = [src[n] for n in avg]
        # Copied every step: integer parameters and every buffer (BN statistics, SN u/v).
        src_bufs = dict(model.named_buffers())
        copy_dst, copy_src = [], []
        for prof, prof_params in zip(self.profiles, mine):
            bufs = dict(prof.named_buffers())
            if bufs.keys() != src_bufs.keys():
                raise ValueError(f"model's buffers do not match the PostHocEMA's (differ in "
                                 f"{sorted(set(bufs) ^ set(src_bufs))[:5]})")
            for n in prof_params:
                if not src[n].is_floating_point():
                    copy_dst.append(prof_params[n])
                    copy_src.append(src[n])
            for n, b in bufs.items():
                copy_dst.append(b)
                copy_src.append(src_bufs[n])
        update = PlannedEmaMultiUpdate(shadows, params, self.impl) if params else None
        pairs = (update, copy_dst, copy_src)
        self._plan_cache[id(model)] = (weakref.ref(model), pairs)
        return pairs

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """One step of every profile (update number t = step + 1 has decay (1 - 1/t)^(gamma+1));
        a snapshot every snapshot_every updates."""
        model = self._model if model is None else unwrap(model)
        update, copy_dst, copy_src = self._pairs(model)
        t = self.step + 1
        if update is not None:
            update([1.0 - power_beta(t, g) for g in self.gammas])
        if copy_dst:
            torch._foreach_copy_(copy_dst, copy_src)
        self.step = t
        if t % self.snapshot_every == 0:
            self.snapshot()

    # -- snapshots -----------------------------------------------------------------------------
    def _snapshot_record(self) -> dict:
        return {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "step": self.step,
                "sigma_rels": list(self.sigma_rels), "gammas": list(self.gammas),
                "averaged": [n for n, p in self.profiles[0].named_parameters() if p.is_floating_point()],
                "profiles": [{k: v.detach().to("cpu", copy=True) for k, v in prof.state_dict().items()}
                             for prof in self.profiles]}

    def snapshot(self) -> None:
        """Save the K profiles now (automatic every snapshot_every updates)."""
        if self.out_dir is None:
            self.snapshots.append(self._snapshot_record())
        elif _writes_files():
            atomic_torch_save(self._snapshot_record(),
                              os.path.join(self.out_dir, f"ema-snapshot-{self.step:010d}.pt"))

    def _records(self):
        return list(self.snapshots) if self.out_dir is None else snapshot_paths(self.out_dir)

    # -- synthesis -----------------------------------------------------------------------------
    def synthesize(self, sigma_rel: float, step: int | None = None, as_state_dict: bool = False):
        """The EMA of length sigma_rel at `step` (default: the last snapshot), reconstructed by
        least squares from the snapshots taken up to that step. Returns a copy of the model in
        eval mode holding it (or its state_dict with as_state_dict=True)."""
        state = synthesize_state_dict(self._records(), sigma_rel, step)
        if as_state_dict:
            return state
        model = copy.deepcopy(self._model).eval().requires_grad_(False)
        model.load_state_dict(state)
        return model

    # -- checkpoints -----------------------------------------------------------------------------
    def get_extra_state(self):
        return {"step": self.step, "sigma_rels": list(self.sigma_rels), "snapshots": self.snapshots}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("PostHocEMA state_dict is missing its step counter")
        if tuple(state.get("sigma_rels", ())) != self.sigma_rels:
            raise ValueError(f"PostHocEMA state_dict tracks sigma_rels {state.get('sigma_rels')}, this one "
                             f"{list(self.sigma_rels)}")
        self.step = int(state["step"])
        self.snapshots = list(state.get("snapshots") or [])

    def extra_repr(self) -> str:
        return (f"sigma_rels={self.sigma_rels}, gammas=({', '.join(f'{g:.3f}' for g in self.gammas)}), "
                f"snapshot_every={self.snapshot_every}, out_dir={self.out_dir!r}, step={self.step}")


def atomic_torch_save(obj, path: str) -> None:
    """A snapshot written atomically (gankern._atomic_io): a failed write keeps every earlier one."""
    _atomic_save(obj, path, what="EMA snapshot", kept="earlier snapshots are kept")


def _writes_files() -> bool:
    """Under torch.distributed every rank holds the same EMA (DDP keeps G equal on all ranks), so
    only rank 0 writes: N ranks renaming over the same snapshot file would race for nothing."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def snapshot_paths(run_dir) -> list[str]:
    """The snapshot files of a directory, oldest first."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise SnapshotError(f"{run_dir!r} is not a directory")
    paths = [p for p in glob.glob(os.path.join(run_dir, "ema-snapshot-*.pt"))
             if _SNAPSHOT_NAME.match(os.path.basename(p))]
    return sorted(paths, key=lambda p: int(_SNAPSHOT_NAME.match(os.path.basename(p)).group(1)))


def _load_snapshot(path: str) -> dict:
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise SnapshotError(f"EMA snapshot {path!r} cannot be read ({type(e).__name__})") from None
    if not isinstance(rec, dict) or rec.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path!r} is not a gankern post-hoc EMA snapshot")
    if rec.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(f"EMA snapshot {path!r} has version {rec.get('version')!r}; this gankern reads "
                            f"{SNAPSHOT_VERSION}")
    return rec


def synthesize_state_dict(records, sigma_rel: float, step: int | None = None) -> dict:
    """The synthesized state_dict from snapshot records (dicts, or paths loaded lazily, one at a
    time, so a long run's snapshots never sit in memory together)."""
    sigma_rel = check_sigma_rel(sigma_rel)
    if not records:
        raise SnapshotError("no EMA snapshots yet: the first is taken after snapshot_every updates")
    meta = []
    for r in records:
        rec = _load_snapshot(r) if isinstance(r, str) else r
        meta.append((r, int(rec["step"]), list(rec["gammas"])))
    if step is None:
        step = max(m[1] for m in meta)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    used = [m for m in meta if m[1] <= step]
    if not used:
        raise SnapshotError(f"no EMA snapshot at or before step {step} (the first is at step "
                            f"{min(m[1] for m in meta)})")
    snap_t = [t for _, t, gammas in used for _ in gammas]
    snap_g = [g for _, _, gammas in used for g in gammas]
    x = solve_coefficients(snap_t, snap_g, step, sigma_rel_to_gamma(sigma_rel))
    out: dict = {}
    averaged: list = []
    i = 0
    for r, _, gammas in used:
        rec = _load_snapshot(r) if isinstance(r, str) else r
        averaged = rec["averaged"]
        for prof in rec["profiles"]:
            for name in averaged:
                term = prof[name].double() * float(x[i])
                out[name] = term if name not in out else out[name].add_(term)
            i += 1
        last = rec["profiles"][-1]  # buffers and non-averaged entries: the latest copy
    for name, value in last.items():
        out[name] = out[name].to(value.dtype) if name in averaged else value.clone()
    return out
