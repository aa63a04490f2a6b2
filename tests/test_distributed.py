"""Two gloo processes with all-reduced gradients equal one process with the global batch,
through the gradient penalty's double backward (issue 8, distributed training)."""

import os
import socket
import subprocess
import sys

import torch

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world_size: int, out_dir, steps: int = 5) -> None:
    port = _free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, WORKER, str(out_dir), str(steps)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out


def test_two_ranks_equal_one_rank_with_the_global_batch(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir()
    double.mkdir()
    _run(1, single)
    _run(2, double)
    ref = torch.load(single / "rank0.pt")
    r0, r1 = torch.load(double / "rank0.pt"), torch.load(double / "rank1.pt")
    for k in ref:
        assert torch.equal(r0[k], r1[k]), f"ranks diverged in {k}"
        torch.testing.assert_close(r0[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs from 1-process run")
