"""scripts/penalty_bound.py (the README quotes its bound for the WGAN-GP trainer cases): its
premise, that the pass it subtracts only ever adds zeros to D's gradients, and that it runs."""

import importlib.util
import os

import torch

from gankern.bench.cases import trainers as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("penalty_bound", os.path.join(ROOT, "scripts", "penalty_bound.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_subtracted_pass_adds_only_zeros_so_dropping_it_changes_no_gradient():
    torch.manual_seed(0)
    D = T.dcgan_critic32(8).double()
    real, fake = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.randn(3, 3, 32, 32, dtype=torch.float64)
    alpha = torch.rand(3, 1, 1, 1, dtype=torch.float64)
    assert _script()._zero_pass_timer(D, real, fake, alpha) > 0
    grads = [p.grad for p in D.parameters()]
    assert all(g is not None for g in grads) and not any(g.any() for g in grads)


def test_it_prints_a_bound_for_both_wgan_gp_trainers(capsys):
    assert _script().main(["--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("MLP WGAN-GP critic", "DCGAN WGAN-GP critic"):
        line = next(l for l in out.splitlines() if l.startswith(name))
        bound = float(line.split("bound ")[1].split("x")[0])
        assert bound > 1.0
