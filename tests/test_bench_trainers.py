"""The third-party-style trainer benchmark cases: the gankern-swapped iteration is checked equal
to the trainer as written (float64) before it is timed, and the check can fail."""

import torch

from gankern.bench import runner
from gankern.bench.cases import e2e, trainers
from gankern.bench.floors import PARAMETRIZED_FLOOR, WeightCopy


def _mlp_case(batch=4):
    # Batch 4, not 2: at batch 2 the fp32 trainer as written lands ~1e-3 from float64 on an
    # AVX-512 Xeon (Adam turning near-zero gradients into lr-sized steps), which makes the
    # tolerance (2x the trainer's own error) too loose to mean much; at 4 it is ~3e-6.
    return trainers.make_case("MLP WGAN-GP", lambda: (trainers.mlp_g(), trainers.mlp_critic()),
                              image=(1, 28, 28), z_dim=100, batch=batch, loss="wgan", lr=2e-4,
                              betas=(0.5, 0.999), sn=False, device=torch.device("cpu"))


def test_gankern_swapped_mlp_wgan_gp_iteration_equals_the_trainer_as_written():
    case = _mlp_case()
    for impl in case.impls:
        res = runner.check_impl(case, impl, torch.device("cpu"))
        assert res.status == runner.STATUS_OK, (impl.label, res.note)
        assert res.error <= case.tolerance <= 1e-3


def test_the_check_fails_for_a_different_penalty():
    # Swap in a penalty with the wrong interpolation side (gankern's alpha taken as the plain
    # one's, i.e. the point mirrored): the float64 check must report it wrong.
    case = _mlp_case()
    fused = case.impls[0]
    it = fused.run.__self__
    it.penalty = lambda D, real, fake, alpha: trainers.gankern_gp(D, real, fake, 1 - alpha)
    res = runner.check_impl(case, fused, torch.device("cpu"))
    assert res.status == runner.STATUS_WRONG


def test_sngan_resnet_blocks_keep_shapes():
    G, D = trainers.ResNetG32(16, 16), trainers.ResNetD32(16)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 3, 32, 32) and D(x).shape == (3, 1)


def test_floor_rows_run_the_iteration_without_the_piece_and_are_checked():
    # The "(floor)" rows (the README's ceiling) must be the same iteration minus SN or the
    # penalty, checked against that in float64; a floor that kept the penalty must read wrong.
    case = _mlp_case()
    floor = next(i for i in case.impls if i.label == trainers.FLOOR_PENALTY)
    assert case.overhead_over == trainers.FLOOR_PENALTY
    assert runner.check_impl(case, floor, torch.device("cpu")).status == runner.STATUS_OK
    wrong = _mlp_case()
    floor = next(i for i in wrong.impls if i.label == trainers.FLOOR_PENALTY)
    floor.run.__closure__[0].cell_contents.penalty = trainers.gankern_gp  # the floor's Iteration
    assert runner.check_impl(wrong, floor, torch.device("cpu")).status == runner.STATUS_WRONG


def test_e2e_floors_are_the_gankern_step_without_sn_and_with_weight_copies():
    case = e2e.cases(torch.device("cpu"), quick=True)[0]  # smaller shapes land over 1e-5 (Adam noise)
    labels = [i.label for i in case.impls]
    assert labels == ["gankern", "plain PyTorch", e2e.FLOOR, PARAMETRIZED_FLOOR] and case.overhead_over == e2e.FLOOR
    for impl in case.impls:
        res = runner.check_impl(case, impl, torch.device("cpu"))
        assert res.status == runner.STATUS_OK, (impl.label, res.note)
    floor_step = case.impls[2].run.__closure__[0].cell_contents
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in floor_step.D.modules())
    # The gankern step's D is grouped (the README's recipe).
    gankern_step = case.impls[0].run.__self__
    assert "_gk_sn_group" in gankern_step.D.__dict__
    # The per-layer floor: every D weight behind a copy of itself, read as gankern's SN weights
    # are, and nothing else; a copy that computed something else (W·1.001) must read wrong.
    per_layer = next(c.cell_contents for c in case.impls[3].run.__closure__
                     if isinstance(c.cell_contents, e2e.Step))
    weights = [m for m in per_layer.D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert weights and all(isinstance(m.parametrizations.weight[0], WeightCopy) for m in weights)
    assert all(getattr(type(m).__dict__["weight"].fget, "gankern_direct_read", False) for m in weights)
    wrong = e2e.cases(torch.device("cpu"), quick=True)[0]
    step = next(c.cell_contents for c in wrong.impls[3].run.__closure__ if isinstance(c.cell_contents, e2e.Step))
    for m in step.D.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.parametrizations.weight[0].forward = lambda w: w * 1.001
    assert runner.check_impl(wrong, wrong.impls[3], torch.device("cpu")).status == runner.STATUS_WRONG
