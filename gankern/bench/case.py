"""What a benchmark case is: the contract between the per-op case files and the runner.

Each op contributes gankern/bench/cases/<op>.py with `def cases(device, quick) -> list[Case]`.
The runner (gankern/bench/runner.py) times every implementation of a case side by side in one
run, checks each result against the float64 reference first (a wrong result reports no time),
and derives ratios, GB/s and % of the floor. benchmarks/bench_<op>.py runs the same cases
under pytest-benchmark, so the two never disagree about what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class Impl:
    """One way of computing the case: a gankern backend or a reference implementation."""

    label: str                      # e.g. "gankern[cuda]", "gankern[triton]", "torch", "torch.compile"
    run: Callable[[], Any]          # one iteration; returns what `error` checks
    is_baseline: bool = False       # the implementation ratios are taken against
    setup: Optional[Callable[[], None]] = None  # once before timing (warm-up, compile)
    skip: Optional[str] = None      # why it cannot run here (e.g. "ema_pytorch not installed"):
                                    # listed in the table with the reason, never run or timed


@dataclass
class Case:
    op: str                         # "ema", "spectral_norm", "gradient_penalty", "bias_act", "e2e"
    name: str                       # what is measured, e.g. "SNGAN-32 D fwd+bwd, fp32, batch 64"
    impls: list[Impl]
    # result of an Impl.run -> relative error against the float64 reference (None: not checkable)
    error: Optional[Callable[[Any], float]] = None
    tolerance: float = 1e-5         # a result with larger error is reported wrong, without a time
    bytes_moved: Optional[int] = None   # the minimum bytes a perfect kernel must move (floor)
    flops: Optional[int] = None         # the minimum FLOPs (compute floor)
    params: dict = field(default_factory=dict)  # shapes, dtype, batch: printed and saved in JSON
    # The label of a floor implementation (e.g. "no SN (floor)"): every other one then also
    # reports its overhead over it (time - floor time) and how many times smaller that is than
    # the baseline's overhead, the figure SN's targets are stated in.
    overhead_over: Optional[str] = None
    # At least this many interleaved timing rounds, whatever the time budget: a whole training
    # iteration of a few hundred ms fits only ~5 rounds in the quick budget, and its median
    # of 5 moved by 30% between runs (e2e read 0.73x once, 1.11-1.14x around it).
    min_rounds: int = 0
