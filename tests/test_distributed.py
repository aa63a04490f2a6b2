"""GANTrainer on DistributedDataParallel: N gloo ranks equal one process on the global batch
(issue 19). One launch of tests/dist_worker.py (4 processes) trains the smoke case on 4 ranks,
every case on 2 of them, and every case again as one process on rank 0, so the suite pays for
process start-up once.

Tolerances: float64 cases agree to 1e-9 (the one difference is the order of the gradient sum:
one process sums 8 samples, DDP averages two sums of 4; Adam's eps keeps that ~1e-16 relative).
The bf16 and fp16 (GradScaler) autocast cases run in float32: per-step losses and gradient norms
agree to 2e-2, ranks stay bit-equal to each other.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)
WORKER = os.path.join(HERE, "dist_worker.py")
sys.path.insert(0, HERE)
from dist_worker import ALL_CASES, CASES, SMOKE_CASES, STEPS  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, out_dir) -> None:
    port, port2 = _free_port(), _free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, WORKER, str(out_dir), str(port2)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:  # a rank stuck in a collective must not outlive the test
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_runs")
    launch(4, out)
    return out


def _load(out, case, tag):
    return torch.load(out / f"{case}.{tag}.pt", weights_only=False)


def _tensors(state):
    return {f"{part}.{k}": v for part in ("G", "D", "ema") if part in state for k, v in state[part].items()}


def check_equal_to_single(out, case, world_size, atol, rtol):
    ref = _load(out, case, "single")
    ranks = [_load(out, case, f"w{world_size}.rank{r}") for r in range(world_size)]
    ref_t = _tensors(ref)
    assert ref_t, case
    for r, state in enumerate(ranks):
        got = _tensors(state)
        assert got.keys() == ref_t.keys()
        for k, v in got.items():
            # DDP averages the same gradient bytes on every rank: ranks agree bit for bit.
            assert torch.equal(v, _tensors(ranks[0])[k]), f"{case}: rank {r} diverged from rank 0 in {k}"
            torch.testing.assert_close(v, ref_t[k], atol=atol, rtol=rtol,
                                       msg=lambda m: f"{case}: {k} differs from the 1-process run: {m}")
    if "records" in ref:
        assert len(ref["records"]) == STEPS
        for got, want in zip(ranks[0]["records"], ref["records"]):
            assert got.keys() == want.keys(), case
            for k in want:
                # nan_ok: fp16's GradScaler skips its first D step (overflow by design) on both.
                assert got[k] == pytest.approx(want[k], rel=rtol * 10, abs=atol * 10, nan_ok=True), \
                    (case, got["step"], k)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if CASES.get(c, (torch.float64,))[0] == torch.float64])
def test_two_ranks_equal_one_process_in_float64(runs, case):
    check_equal_to_single(runs, case, 2, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("case", ["r1-bf16", "r1-fp16"])
def test_two_ranks_under_autocast_equal_one_process(runs, case):
    check_equal_to_single(runs, case, 2, atol=2e-3, rtol=2e-2)


def test_fp16_grad_scaler_skips_the_same_steps_on_every_rank(runs):
    skipped = [[r["d_grad_norm"] != r["d_grad_norm"] for r in _load(runs, "r1-fp16", tag)["records"]]
               for tag in ("w2.rank0", "w2.rank1", "single")]
    assert skipped[0] == skipped[1] == skipped[2] and skipped[0][0], skipped


def test_cases_cover_every_regularizer_and_option():
    # What "every kind" means here, so a case removed from the worker fails loudly.
    import gankern as gk

    kinds = {type(kw["reg"]).__name__ for _, kw in CASES.values()}
    assert kinds >= {"WGANGP", "R1", "R2", "R1R2", "DRAGAN"}
    assert any(kw["reg"].every > 1 for _, kw in CASES.values())
    for option in ("spectral_norm", "amp", "instance_noise", "d_l2", "unrolled"):
        assert any(kw.get(option) for _, kw in CASES.values()), option
    assert any(kw.get("ema") for _, kw in CASES.values())
    assert any(kw.get("n_critic", 1) > 1 for _, kw in CASES.values())


def test_a_nan_on_one_rank_stops_every_rank_at_that_step(runs):
    for rank in (0, 1):
        seen = (runs / f"diverge.rank{rank}.txt").read_text()
        assert seen.startswith("diverged at step 0: the D loss is nan"), (rank, seen)


@pytest.mark.parametrize("case", SMOKE_CASES)
def test_four_ranks_equal_one_process(runs, case):
    check_equal_to_single(runs, case, 4, atol=1e-9, rtol=1e-9)
