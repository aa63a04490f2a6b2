"""End-to-end SNGAN-32 training step (one lazy-R1 period): gankern vs plain PyTorch, results
checked against the float64 plain step first (cases: gankern/bench/cases/e2e.py)."""

OP = "e2e"


def test_e2e(case_impl, bench_case):
    bench_case(case_impl)
