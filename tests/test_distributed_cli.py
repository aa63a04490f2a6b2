"""`gankern train` under torchrun (issue 19): 2 gloo ranks train end to end, rank 0 alone writes
pictures, metrics and the checkpoint, and that checkpoint resumes in one process (a different
world size: --batch-size is the global batch, and the checkpoint's generators draw it)."""

import json
import os
import socket
import subprocess
import sys

import torch

from gankern.cli import main

FLAGS = ["--data", "ring", "--batch-size", "16", "--hidden", "16", "--layers", "2", "--z-dim", "4",
         "--every", "4", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_gankern_train_under_torchrun_then_resume_in_one_process(tmp_path, capsys):
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    stdout = _run(torchrun + ["-m", "gankern", "train", *FLAGS, "--steps", "4", "--out", str(out)])
    assert stdout.count("gankern train: done at step 4") == 1, stdout  # rank 0 alone reports
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4]  # one line per interval: rank 0 alone writes
    assert sorted(os.listdir(out / "samples")) == ["step_0000004.png"]
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 4 and ck["config"]["batch_size"] == 16

    # In this process (no torchrun environment): a world of one.
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--steps", "6", "--out", str(out)]) == 0
    assert "done at step 6" in capsys.readouterr().out
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [4, 6]
    resumed = torch.load(out / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == 6
    moved = [k for k in ck["G"] if not torch.equal(ck["G"][k], resumed["G"][k])]
    assert moved, "the resumed run did not train G"
