"""Spectral norm in a GAN D step: gankern SN vs torch SN vs no SN, and SN alone
(cases: gankern/bench/cases/spectral_norm.py)."""

OP = "spectral_norm"


def test_spectral_norm(case_impl, bench_case):
    bench_case(case_impl)
