"""EMA step over a generator's parameter list: gankern backends vs torch._foreach_lerp_, the
StyleGAN2-ADA loop, ema-pytorch and torch.compile (cases: gankern/bench/cases/ema.py)."""

OP = "ema"


def test_ema(case_impl, bench_case):
    bench_case(case_impl)
