"""gk.EMA reproduces timm ModelEmaV3 and ema-pytorch EMA step for step (issue 13, item 5).

Each tool's update rule is written out below in plain Python from its documented behaviour
(timm: ModelEmaV3.get_decay / apply_update_ and the step its train.py passes; ema-pytorch
0.7-0.8: EMA.update / get_current_decay), independently of gankern. The model is float64 with
a BatchNorm (so its running statistics are averaged, as both tools do) and changes every step;
200 steps with update_after_step > 0 and, for ema-pytorch, update_every > 1.

Tolerance: the specs write d * ema + (1 - d) * x, gankern runs torch.lerp; in float64 the two
differ by a few ulp per step, so after 200 steps the relative gap stays under 1e-12. Getting the
warm-up offset wrong (gankern's old absolute step) moves the result by ~1e-2 (checked below).
"""

import copy

import pytest
import torch
from torch import nn

import gankern as gk

STEPS = 200
TOL = 1e-12


# Tiny tensors: two threads per op only add wake-ups on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 17), nn.BatchNorm1d(17), nn.LeakyReLU(0.2), nn.Linear(17, 3)).double()


def train_step_(model, step):
    """Stand-in for an optimizer step that also moves the BatchNorm statistics."""
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64), alpha=0.05)
        model(torch.randn(8, 5, generator=g, dtype=torch.float64))


class TimmSpec:
    """timm ModelEmaV3 with update(model, step=n), n = number of optimizer updates from 1.

    decay(n): t = max(0, n - update_after_step - 1); 0 if t <= 0; with warm-up
    max(min(1 - (1 + t/gamma)^-power, decay), min_decay), else decay. Every floating state_dict
    entry becomes d * ema + (1 - d) * model; the others are copied.
    """

    def __init__(self, model, decay, min_decay, update_after_step, use_warmup, warmup_gamma, warmup_power):
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.decay, self.min_decay, self.after = decay, min_decay, update_after_step
        self.use_warmup, self.gamma, self.power = use_warmup, warmup_gamma, warmup_power

    def decay_at(self, n):
        t = max(0, n - self.after - 1)
        if t <= 0:
            return 0.0
        if not self.use_warmup:
            return self.decay
        return max(min(1 - (1 + t / self.gamma) ** -self.power, self.decay), self.min_decay)

    def update(self, model, n):
        d = self.decay_at(n)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k] = d * self.state[k] + (1 - d) * v
            else:
                self.state[k] = v.clone()


class EmaPytorchSpec:
    """ema-pytorch EMA.update(), its k-th call (k from 0): the first call copies; otherwise
    nothing unless k % update_every == 0; then a copy if k <= update_after_step, else
    ema = d * ema + (1 - d) * model for floating params and buffers, with the decay computed on
    its int64 step counter (= k + 1), hence in float32:
    epoch = max(k + 1 - update_after_step - 1, 0); d = 0 if epoch <= 0 else
    clamp(1 - (1 + epoch/inv_gamma)^-power, min_value, beta). beta == 1 never lerps.
    Integer buffers are never touched."""

    def __init__(self, model, beta, update_after_step, update_every, inv_gamma, power, min_value):
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.beta, self.after, self.every = beta, update_after_step, update_every
        self.inv_gamma, self.power, self.min_value = inv_gamma, power, min_value
        self.k, self.initted = 0, False

    def _copy(self, model):
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k] = v.clone()

    def update(self, model):
        k = self.k
        self.k += 1
        if not self.initted:
            self.initted = True
            self._copy(model)
            return
        if k % self.every != 0:
            return
        if k <= self.after:
            self._copy(model)
            return
        if self.beta == 1.0:
            return
        epoch = torch.tensor(max(k + 1 - self.after - 1, 0), dtype=torch.float32)
        d = 0.0 if epoch.item() <= 0 else \
            (1 - (1 + epoch / self.inv_gamma) ** -self.power).clamp(self.min_value, self.beta).item()
        for key, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[key] = d * self.state[key] + (1 - d) * v


def max_rel_gap(spec_state, ema, floating_only=True):
    worst = 0.0
    for k, v in ema.module.state_dict().items():
        if floating_only and not v.is_floating_point():
            continue
        ref = spec_state[k]
        worst = max(worst, float((v - ref).abs().max() / ref.abs().max().clamp_min(1e-300)))
    return worst


TIMM_CASES = [
    dict(decay=0.9998, min_decay=0.0, update_after_step=17, use_warmup=True, warmup_gamma=1.0, warmup_power=3 / 4),
    dict(decay=0.95, min_decay=0.3, update_after_step=40, use_warmup=True, warmup_gamma=2.0, warmup_power=2 / 3),
    dict(decay=0.9, min_decay=0.0, update_after_step=25, use_warmup=False, warmup_gamma=1.0, warmup_power=2 / 3),
]


@pytest.mark.parametrize("kw", TIMM_CASES, ids=["warmup", "warmup-min_decay", "no-warmup"])
def test_reproduces_timm_model_ema_v3(kw):
    model = make_model()
    spec = TimmSpec(model, **kw)
    ema = gk.EMA(model, decay=gk.ema_schedules.timm(**kw), buffers="average")
    for n in range(1, STEPS + 1):  # timm's train.py: num_updates += 1, then update(step=num_updates)
        train_step_(model, n)
        spec.update(model, n)
        ema.update()
    assert max_rel_gap(spec.state, ema, floating_only=False) < TOL  # integer buffers copied by both


EMA_PYTORCH_CASES = [
    dict(beta=0.9999, update_after_step=37, update_every=5, inv_gamma=1.0, power=2 / 3, min_value=0.0),
    dict(beta=0.97, update_after_step=12, update_every=3, inv_gamma=3.0, power=3 / 4, min_value=0.4),
    dict(beta=0.999, update_after_step=10, update_every=1, inv_gamma=1.0, power=1.0, min_value=0.0),
    dict(beta=1.0, update_after_step=9, update_every=4, inv_gamma=1.0, power=2 / 3, min_value=0.0),
]


@pytest.mark.parametrize("kw", EMA_PYTORCH_CASES, ids=["every5", "every3-min_value", "every1", "frozen"])
def test_reproduces_ema_pytorch(kw):
    model = make_model()
    spec = EmaPytorchSpec(model, **kw)
    ema = gk.EMA(model, decay=gk.ema_schedules.ema_pytorch(**kw), update_every=kw["update_every"],
                 buffers="average")
    for k in range(STEPS):
        train_step_(model, k)
        spec.update(model)
        ema.update()
        if k % 50 == 0:
            assert max_rel_gap(spec.state, ema) < TOL, k
    assert max_rel_gap(spec.state, ema) < TOL


def test_decays_are_bit_identical_to_the_written_out_rules():
    timm_kw = TIMM_CASES[1]
    spec = TimmSpec(make_model(), **timm_kw)
    schedule = gk.ema_schedules.timm(**timm_kw)
    assert [schedule(k) for k in range(STEPS)] == [spec.decay_at(k + 1) for k in range(STEPS)]
    assert gk.ema_schedules.timm(first_step=0, update_after_step=3, use_warmup=True)(5) == \
        TimmSpec(make_model(), 0.9999, 0.0, 3, True, 1.0, 2 / 3).decay_at(5)


def test_the_absolute_step_warmup_would_not_match():
    """The gap issue 13 measured: gankern's plain warm-up on its absolute step, with
    update_after_step on gk.EMA, is several percent off timm's. The test above can fail."""
    kw = TIMM_CASES[0]
    model = make_model()
    spec = TimmSpec(model, **kw)
    ema = gk.EMA(model, decay=gk.ema_schedules.warmup(kw["warmup_gamma"], kw["warmup_power"], 0.0, kw["decay"]),
                 update_after_step=kw["update_after_step"], buffers="average")
    for n in range(1, 51):
        train_step_(model, n)
        spec.update(model, n)
        ema.update()
    assert max_rel_gap(spec.state, ema) > 1e-3


def test_conflicting_gk_ema_arguments_are_refused():
    model = make_model()
    with pytest.raises(ValueError, match="update_every=1 conflicts"):
        gk.EMA(model, decay=gk.ema_schedules.ema_pytorch(update_every=10))
    with pytest.raises(ValueError, match="update_after_step=5 conflicts"):
        gk.EMA(model, decay=gk.ema_schedules.timm(update_after_step=5), update_after_step=5)
    with pytest.raises(ValueError, match="update_every"):
        gk.ema_schedules.ema_pytorch(update_every=0)
    with pytest.raises(ValueError, match="beta"):
        gk.ema_schedules.ema_pytorch(beta=1.5)


def test_ema_pytorch_leaves_integer_buffers_gankern_copies_them():
    """The one documented difference: ema-pytorch never touches num_batches_tracked; gankern
    copies it (BatchNorm reads it only when momentum=None)."""
    model = make_model()
    frozen = copy.deepcopy(model.state_dict())
    kw = EMA_PYTORCH_CASES[0]
    spec = EmaPytorchSpec(model, **kw)
    ema = gk.EMA(model, decay=gk.ema_schedules.ema_pytorch(**kw), update_every=kw["update_every"],
                 buffers="average")
    for k in range(10):
        train_step_(model, k)
        spec.update(model)
        ema.update()
    key = "1.num_batches_tracked"
    assert spec.state[key] == frozen[key]
    assert ema.module.state_dict()[key] == model.state_dict()[key] == 10
