"""Checkpoint files: atomic writes, safe reads, and the RNG states a bit-identical resume needs.

A checkpoint is written to a temporary file in the target's directory, flushed to disk, then
renamed over the target (os.replace is atomic on POSIX and Windows), so a crash or a Ctrl-C
mid-write leaves the previous checkpoint intact. Reads use torch.load(weights_only=True): a
checkpoint holds tensors, numbers, strings and containers only, never pickled code.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile

import torch

from .._atomic_io import atomic_torch_save

FORMAT = "gankern.GANTrainer"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a gankern trainer checkpoint."""


def atomic_save(obj, path) -> None:
    path = os.fspath(path)
    kept = "the previous checkpoint there is kept" if os.path.exists(path) else "nothing was there before"
    atomic_torch_save(obj, path, what="checkpoint", kept=kept)


def read(path) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a file")
    # torch.save writes a zip archive; anything else is another format or garbage. Said here,
    # because torch's own message for it suggests weights_only=False, which would run the file's code.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path!r} is not a gankern checkpoint (not a torch.save file, or "
                              f"truncated before its end)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path!r} is not a gankern checkpoint: it holds pickled objects other "
                              f"than tensors and plain data (not loaded: that would run its code)") from None
    except Exception as e:  # torch raises many types (RuntimeError, OSError, KeyError) for a damaged file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path!r} is damaged (truncated or corrupt): {msg[:120]}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a gankern GANTrainer checkpoint")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has version {ck.get('version')!r}; this gankern reads {VERSION}")
    return ck


def rng_state(generators: dict) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "generators": {k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    for k, g in generators.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
