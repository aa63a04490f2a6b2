"""Third-party-style trainers (MLP and DCGAN WGAN-GP critics, SNGAN ResNet with SN), a whole
iteration as written and with gankern swapped in, each checked against the float64 iteration
first, plus the floor rows without the penalty or SN (cases: gankern/bench/cases/trainers.py)."""

OP = "trainers"


def test_trainers(case_impl, bench_case):
    bench_case(case_impl)
