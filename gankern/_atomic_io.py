"""One atomic, durable torch.save for every file gankern writes that a crash must not tear
(trainer checkpoints, post-hoc EMA snapshots): a temporary file in the target's directory,
flushed and fsynced, renamed over the target (os.replace is atomic on POSIX and Windows), then
the directory fsynced so the rename itself survives a power loss. The target holds the old or
the new content, never a torn one; on error the temporary file is removed."""

from __future__ import annotations

import os

import torch


def atomic_torch_save(obj, path, what: str = "file", kept: str = "the previous one there is kept") -> None:
    """torch.save(obj, path) atomically. what/kept word the OSError raised on failure, e.g.
    "could not write checkpoint PATH: No space left on device (the previous checkpoint ...)"."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(directory)
    except OSError as e:  # full disk, quota, permissions: what was there is untouched
        raise OSError(e.errno, f"could not write {what} {path!r}: {e.strerror or e} ({kept})") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open a directory: the rename is all we have
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
