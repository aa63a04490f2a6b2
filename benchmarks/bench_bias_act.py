"""Bias + activation forward and backward, gankern against torch in both memory layouts, checked
against the float64 reference first (cases: gankern/bench/cases/bias_act.py)."""

OP = "bias_act"


def test_bias_act(case_impl, bench_case):
    bench_case(case_impl)
