"""A GP-regularized D step (loss + penalty + backward), WGAN-GP and R1, DCGAN-64 and SNGAN-32:
gankern (fused bias_act + norm penalty) vs the plain-PyTorch recipe
(cases: gankern/bench/cases/gradient_penalty.py)."""

OP = "gradient_penalty"


def test_gradient_penalty(case_impl, bench_case):
    bench_case(case_impl)
