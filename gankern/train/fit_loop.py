"""GANTrainer.fit's loop: batches, progress (gankern/progress.py), periodic pictures, metrics and
checkpoints, and the handling of divergence and interruption.

Kept apart from trainer.py so the step logic stays readable. Signals: the first Ctrl-C (SIGINT)
or SIGTERM only sets a flag; the loop finishes the step it is in, writes the checkpoint, and
raises TrainingInterrupted, so the checkpoint is always a consistent between-steps state. A
second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import torch

from .distributed import any_rank, shard, world
from .errors import TrainingDiverged, TrainingInterrupted


def batches(trainer, data):
    """An endless stream of batches of trainer.batch_size from `data` (see GANTrainer.fit).

    Under torch.distributed, batch_size is the global batch: every rank draws it from the same
    generator and keeps its own slice. An iterable (e.g. a DataLoader) is used as given: shard
    it yourself (DistributedSampler).
    """
    B = trainer.batch_size
    if isinstance(data, torch.Tensor):
        if data.shape[0] == 0:
            raise ValueError("data is empty")
        while True:
            yield shard(data[torch.randint(data.shape[0], (B,), generator=trainer.data_gen)])
    elif hasattr(data, "sample") and callable(data.sample):
        while True:
            yield shard(data.sample(B, generator=trainer.data_gen))
    else:
        try:
            iter(data)
        except TypeError:
            raise TypeError(f"data must be a tensor, an object with .sample(n, generator), or an "
                            f"iterable of batches; got {type(data).__name__}") from None
        while True:
            empty = True
            for batch in data:
                empty = False
                yield batch[0] if isinstance(batch, (tuple, list)) else batch
            if empty:
                raise ValueError("data yielded no batches")


def default_metrics(trainer, data) -> dict:
    """Modes covered / high-quality rate of raw and EMA G for 2-D mixtures (2,500 samples)."""
    if not (hasattr(data, "centers") and hasattr(data, "std")):
        return {}
    from ..metrics import mode_metrics

    out = {}
    for name, use_ema in (("", False), ("ema_", True)):
        if use_ema and trainer.ema is None:
            continue
        m = mode_metrics(trainer.sample(2500, ema=use_ema), data.centers, data.std)
        out[name + "modes"] = m["modes"]
        out[name + "hq"] = m["hq"]
    return out


def save_picture(trainer, data, path) -> None:
    from .pictures import save_samples, save_scatter

    if trainer.sample_shape == (2,):
        ref = None
        if hasattr(data, "sample"):
            ref = data.sample(1000, generator=torch.Generator().manual_seed(1))
        elif isinstance(data, torch.Tensor):
            ref = data[:1000]
        extra = {"EMA G": trainer.sample(1000, ema=True)} if trainer.ema is not None else None
        save_scatter(path, trainer.sample(1000, ema=False), data=ref,
                     centers=getattr(data, "centers", None), title=f"G, step {trainer.step_count}",
                     extra=extra)
    else:
        save_samples(path, trainer.sample(64, ema=True))


class _Signals:
    """Turns the first SIGINT/SIGTERM into a flag (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else v


def run_fit(trainer, data, steps, out_dir=None, every=500, progress=True, metrics_fn=None) -> list:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    stream = batches(trainer, data)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt") if out_dir else None
    if out_dir:
        os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)
    records, sums, counts = [], {}, {}
    # Under torchrun every rank runs this loop in step; rank 0 alone writes files and shows
    # progress (trainer.save is rank 0's too), and a signal stops all ranks at the same step.
    writer = world()[0] == 0
    bar = None
    if progress and writer:
        from ..progress import Progress

        bar = Progress(steps, "train", initial=min(trainer.step_count, steps))
    t0 = time.time()
    try:
        with _Signals() as sig:
            while trainer.step_count < steps:
                if any_rank(sig.signum is not None):
                    sig.signum = sig.signum or signal.SIGTERM  # the rank that got none stops as its peers
                    where = ""
                    if ckpt_path:
                        trainer.save(ckpt_path)
                        where = f"; checkpoint written to {ckpt_path}"
                    name = signal.Signals(sig.signum).name
                    raise TrainingInterrupted(f"{name} at step {trainer.step_count}{where}", sig.signum)
                try:
                    out = trainer.step(next(stream))
                except TrainingDiverged as e:
                    kept = (f"; the last good checkpoint {ckpt_path} was kept"
                            if ckpt_path and os.path.exists(ckpt_path) else "")
                    raise TrainingDiverged(f"{e}{kept}") from None
                for k, v in out.items():
                    if k != "step":
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                if bar is not None:
                    bar.update(1, **{k: _fmt(out[k]) for k in ("d_loss", "g_loss", "d_grad_norm", "reg")
                                     if k in out})
                if trainer.step_count % every == 0 or trainer.step_count == steps:
                    rec = {"step": trainer.step_count, "time_s": round(time.time() - t0, 3)}
                    rec.update({k: sums[k] / counts[k] for k in sums})
                    rec.update(metrics_fn(trainer) if metrics_fn else default_metrics(trainer, data))
                    sums, counts = {}, {}
                    records.append(rec)
                    if out_dir and writer:
                        save_picture(trainer, data, os.path.join(out_dir, "samples",
                                                                 f"step_{trainer.step_count:07d}.png"))
                        with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
                            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                                for k, v in rec.items()}) + "\n")
                    if out_dir:
                        trainer.save(ckpt_path)
                    if bar is not None:
                        bar.set_postfix(**{k: _fmt(v) for k, v in rec.items() if k in
                                           ("d_loss", "g_loss", "d_grad_norm", "modes", "ema_modes", "ema_hq")})
    finally:
        if bar is not None:
            bar.close()
    return records
