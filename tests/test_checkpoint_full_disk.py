"""A full disk while saving leaves the previous checkpoint intact (issue 8, safe failure)."""

import errno
import os

import pytest
import torch

import gankern as gk
from gankern.train import checkpoint
from gankern.train.models import MLPDiscriminator, MLPGenerator


def _trainer():
    torch.manual_seed(0)
    return gk.train.GANTrainer(MLPGenerator(z_dim=2, hidden=8, layers=2), MLPDiscriminator(hidden=8, layers=2),
                               loss="hinge", batch_size=8, seed=1)


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _trainer()
    path = tmp_path / "checkpoint.pt"
    trainer.save(path)
    good = path.read_bytes()
    trainer.step(gk.data.ring().sample(8, generator=torch.Generator().manual_seed(0)))
    real_save = torch.save

    def save_until_disk_full(obj, f):
        real_save(obj, f)
        f.truncate(len(good) // 3)  # a partial file, as when the device fills mid-write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", save_until_disk_full)
    with pytest.raises(OSError, match="No space left on device.*previous checkpoint there is kept"):
        trainer.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # no temporary file left behind
    restored = gk.train.GANTrainer.load(path)
    assert restored.step_count == 0
