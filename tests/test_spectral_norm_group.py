"""gk.group_spectral_norm against torch's spectral norm, in the ways a model's forward can go.

Grouping moves every layer's power iteration to the start of the model's call, so each test
makes that visible if it were wrong: a layer the call skips (its u, v must not move, its weight
must get no gradient), a layer read twice (torch iterates twice), an exception half-way, eval,
no_grad, a nested call, a gradient penalty's double backward, deepcopy, torch.func,
and convert_spectral_norm's default. Float64 models registered from one RNG state, compared
with torch at 1e-12 (and with per-layer gankern SN exactly).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from conftest import backends_for

import gankern as gk
from gankern.nn import spectral_norm_group as grouping
from gankern.ops import spectral_norm as sn_ops
from gankern.testing import rel_error

NATIVE = [b for b in backends_for(sn_ops.IMPLEMENTED) if b in sn_ops.NATIVE_PLAN_BACKENDS]
TOL = 1e-12


class Branchy(nn.Module):
    """A small conv D whose forward can skip a layer, read one twice, fail half-way, or write a
    layer's weight in place before reading it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 1, 1)
        self.b = nn.Conv2d(4, 5, 4, 2, 1)
        self.skip = nn.Conv2d(5, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 1)
        self.use_skip, self.b_twice, self.fail, self.write_b = False, False, False, False

    def forward(self, x):
        h = F.leaky_relu(self.a(x), 0.2)
        if self.fail:
            raise RuntimeError("failed on purpose, after reading a")
        if self.write_b:  # e.g. a constraint applied inside forward
            with torch.no_grad():
                self.b.parametrizations.weight.original.mul_(0.5)
        h = F.leaky_relu(self.b(h), 0.2)
        if self.b_twice:
            h = h + F.conv2d(h[:, :4], self.b.weight, None, 1, 2)[:, :, :4, :4]
        if self.use_skip:
            h = h + self.skip(h)
        return self.fc(h.flatten(1))


def layers(m):
    return [m.a, m.b, m.skip, m.fc]


def pair(backend, grouped=True):
    """(torch's SN, gankern's SN grouped) on the same float64 weights and u, v."""
    torch.manual_seed(0)
    base = Branchy().double()
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    for layer in layers(theirs):
        torch_sn(layer)
    torch.manual_seed(1)
    for layer in layers(ours):
        gk.spectral_norm(layer, impl=backend)
    if grouped:
        gk.group_spectral_norm(ours)
    return theirs, ours


def x_of(seed=0, batch=2):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def step(m, x):
    m.zero_grad(set_to_none=True)
    out = m(x)
    out.square().mean().backward()
    return out.detach()


def assert_same_everything(theirs, ours, what):
    for (name, t), (name_o, o) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert name == name_o
        assert rel_error(o, t) <= TOL, f"{what}: {name} differs from torch"
    for (name, p), (_, q) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert (p.grad is None) == (q.grad is None), f"{what}: {name}.grad is {q.grad is None and 'None'} here"
        if p.grad is not None:
            assert rel_error(q.grad, p.grad) <= TOL, f"{what}: {name}.grad differs from torch"


def assert_steps_equal(theirs, ours, x, what):
    assert rel_error(step(ours, x), step(theirs, x)) <= TOL, what
    assert_same_everything(theirs, ours, what)


def stashes_left(m):
    return [n for n, s in m.named_modules() if "_grouped" in s.__dict__]


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("scenario", ["all layers", "skip read", "b read twice"])
def test_training_steps_equal_torch(backend, scenario):
    theirs, ours = pair(backend)
    for m in (theirs, ours):
        m.use_skip = scenario == "all layers"
        m.b_twice = scenario == "b read twice"
    for i in range(3):
        assert_steps_equal(theirs, ours, x_of(i), f"{scenario}, step {i}")
    assert not stashes_left(ours)
    if scenario == "skip read":  # never read: the grouped iteration was undone, no gradient
        assert ours.skip.parametrizations.weight.original.grad is None


@pytest.mark.parametrize("backend", NATIVE)
def test_weight_written_in_forward_before_its_read(backend):
    # torch iterates on the W it reads; the grouped W / sigma of b is stale: b undoes it.
    theirs, ours = pair(backend)
    for m in (theirs, ours):
        m.write_b = True
    for i in range(2):
        assert_steps_equal(theirs, ours, x_of(i), f"written in forward, step {i}")
    assert not stashes_left(ours)


@pytest.mark.parametrize("backend", NATIVE)
def test_optimizer_step_before_backward_raises_as_autograd_does(backend):
    for m in pair(backend):
        out = m(x_of()).square().mean()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.backward()


@pytest.mark.parametrize("backend", NATIVE)
def test_grouped_equals_per_layer_exactly(backend, monkeypatch):
    _, per_layer = pair(backend, grouped=False)
    _, grouped = pair(backend)
    for m in (per_layer, grouped):
        m.use_skip = True
    layers_grouped = []
    real_grouped = sn_ops.grouped_train_forward
    monkeypatch.setattr(sn_ops, "grouped_train_forward",
                        lambda specs, weights: layers_grouped.append(len(specs)) or real_grouped(specs, weights))
    for i in range(2):
        x = x_of(i)
        assert torch.equal(step(grouped, x), step(per_layer, x))
    assert layers_grouped == [4, 4]  # one node per call, all four layers in it
    for a, b in zip(per_layer.state_dict().values(), grouped.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(per_layer.parameters(), grouped.parameters()):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("backend", NATIVE)
def test_exception_midway_restores_unread_layers(backend):
    theirs, ours = pair(backend)
    for m in (theirs, ours):
        m.use_skip = True
        m.fail = True
        with pytest.raises(RuntimeError, match="on purpose"):
            m(x_of())
    # torch iterated layer a only: a's u, v moved, b's, skip's and fc's did not.
    assert_same_everything(theirs, ours, "after the failed call")
    assert not stashes_left(ours) and not ours.__dict__[grouping._CALLS]
    for m in (theirs, ours):
        m.fail = False
    assert_steps_equal(theirs, ours, x_of(1), "the call after")


@pytest.mark.parametrize("backend", NATIVE)
def test_eval_and_no_grad_run_per_layer(backend):
    theirs, ours = pair(backend)
    x = x_of()
    with torch.no_grad():  # training mode, no grad: torch still iterates
        assert rel_error(ours(x), theirs(x)) <= TOL
    assert_same_everything(theirs, ours, "no_grad")
    theirs.eval(), ours.eval()
    assert_steps_equal(theirs, ours, x, "eval")
    assert not stashes_left(ours)


@pytest.mark.parametrize("backend", NATIVE)
def test_nested_grouped_modules(backend):
    # The outer module groups everything; the inner one (grouped too) finds its layers taken.
    theirs, ours = pair(backend)
    outer_ours = gk.group_spectral_norm(nn.Sequential(ours))
    assert_steps_equal(nn.Sequential(theirs), outer_ours, x_of(), "nested")
    assert_same_everything(theirs, ours, "nested, the inner models")
    assert not stashes_left(outer_ours)


class CallsItself(nn.Module):
    """A model whose forward calls the model again (a re-entrant call): layer a is read twice."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x, again: bool = True):
        h = torch.tanh(self.a(x))
        if again:
            h = h + self(x, again=False)
        return self.b(h)


@pytest.mark.parametrize("backend", NATIVE)
def test_reentrant_call_iterates_as_torch(backend):
    torch.manual_seed(0)
    base = CallsItself().double()
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    for m, register in ((theirs, torch_sn), (ours, lambda layer: gk.spectral_norm(layer, impl=backend))):
        torch.manual_seed(1)
        register(m.a), register(m.b)
    gk.group_spectral_norm(ours)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for i in range(2):
        assert_steps_equal(theirs, ours, x, f"re-entrant, step {i}")
    assert not stashes_left(ours) and not ours.__dict__[grouping._CALLS]


@pytest.mark.parametrize("backend", NATIVE)
def test_r1_penalty_double_backward_equals_torch(backend):
    theirs, ours = pair(backend)
    for m in (theirs, ours):
        m.use_skip = True
        m.zero_grad(set_to_none=True)
        x = x_of(3)
        penalty = gk.gradient_penalty(m, x, kind="r1", weight=1.0)
        (penalty + m(x).mean()).backward()
    assert_same_everything(theirs, ours, "R1 step")


@pytest.mark.parametrize("backend", NATIVE)
def test_grouped_node_first_and_second_derivatives(backend):
    # Not gradcheck: the training forward's power iteration moves u, v with every perturbation
    # of W, while its gradient (torch's too) holds them constant. So the node is held to autograd
    # through W / (u^T W v) with the iteration's u, v held constant, in float64: values, the
    # gradient, and the gradient of a gradient (create_graph=True, as a penalty on W's gradient
    # would take). The op inside, normalize, has its gradcheck/gradgradcheck in
    # test_spectral_norm_ops.py.
    from gankern.ops.spectral_norm.reference import to_matrix

    _, ours = pair(backend)
    plists = [m.parametrizations.weight for m in layers(ours)]
    specs = [grouping._grouped_layer(m, "weight", m.parametrizations.weight, m.parametrizations.weight[0])[1]
             for m in layers(ours)]
    weights = [p.original.detach().clone().requires_grad_(True) for p in plists]
    outs = sn_ops.grouped_train_forward(specs, weights)
    expected = [w / (spec[1] @ to_matrix(w, 0) @ spec[2]) for w, spec in zip(weights, specs)]
    g = torch.Generator().manual_seed(9)
    cots = [torch.randn(w.shape, generator=g, dtype=w.dtype) for w in weights]
    directions = [torch.randn(w.shape, generator=g, dtype=w.dtype) for w in weights]
    for what, ys in (("grouped", outs), ("reference", expected)):
        grads = torch.autograd.grad(ys, weights, cots, create_graph=True)
        second = torch.autograd.grad(grads, weights, directions)
        if what == "grouped":
            got = (ys, grads, second)
        else:
            want = (ys, grads, second)
    for name, a, b in zip(("W/sigma", "gradient", "second derivative"), got, want):
        assert rel_error(list(a), list(b)) <= TOL, name


@pytest.mark.parametrize("backend", NATIVE)
def test_deepcopies_group_their_own_layers(backend):
    theirs, ours = pair(backend)
    for m in (theirs, ours):
        m.use_skip = True
    # torch pickles no parametrized module (state_dict only); deepcopy is how a model is copied.
    copies = [copy.deepcopy(ours), copy.deepcopy(copy.deepcopy(ours))]
    x = x_of(5)
    expected = step(copy.deepcopy(theirs), x)
    for c in copies:
        own = {id(m) for m in c.modules() if isinstance(m, gk.nn.SpectralNorm)}
        assert {id(entry[3]) for entry in c.__dict__[grouping._LAYERS]} == own
        assert rel_error(step(c, x), expected) <= TOL
    assert_same_everything(theirs, ours, "original, untouched by its copies")


@pytest.mark.parametrize("backend", NATIVE)
def test_torch_func_grad_equals_torch(backend):
    theirs, ours = pair(backend)
    x = x_of()

    def loss(m):
        params = dict(m.named_parameters())
        return torch.func.grad(lambda p: torch.func.functional_call(m, p, (x,)).square().mean())(params)

    g_theirs, g_ours = loss(theirs), loss(ours)
    for k in g_theirs:
        assert rel_error(g_ours[k], g_theirs[k]) <= TOL, k
    assert_same_everything(theirs, ours, "torch.func")


def test_state_dict_and_hooks():
    theirs, ours = pair("auto")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    n_pre, n_post = len(ours._forward_pre_hooks), len(ours._forward_hooks)
    gk.group_spectral_norm(ours)  # again: refreshes its list, adds no second hook
    assert (len(ours._forward_pre_hooks), len(ours._forward_hooks)) == (n_pre, n_post) == (1, 1)
    ours.load_state_dict(theirs.state_dict())


def test_convert_spectral_norm_groups_by_default():
    theirs, _ = pair("auto")
    converted = gk.convert_spectral_norm(copy.deepcopy(theirs))
    assert any(isinstance(h, grouping._GroupedPreHook) for h in converted._forward_pre_hooks.values())
    plain = gk.convert_spectral_norm(copy.deepcopy(theirs), group=False)
    assert not plain._forward_pre_hooks
    assert_steps_equal(theirs, converted, x_of(), "converted")


def test_bad_input_names_the_argument_and_changes_nothing():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        gk.group_spectral_norm(lambda x: x)
    plain = Branchy()
    with pytest.raises(ValueError, match="no gankern spectral norm"):
        gk.group_spectral_norm(plain)
    assert not plain._forward_pre_hooks and grouping._LAYERS not in plain.__dict__
    with pytest.raises(TypeError, match="group must be a bool"):
        gk.convert_spectral_norm(plain, group=1)


@pytest.mark.parametrize("backend", NATIVE)
def test_functional_call_with_other_tensors_equals_torch(backend):
    # What unrolled D steps do (GANTrainer(unrolled=k)): D called through functional_call with
    # updated, non-leaf parameters, differentiated twice (G's gradient through the updates).
    theirs, ours = pair(backend)
    x = x_of(4)
    results = []
    for m in (theirs, ours):
        m.use_skip = True
        base = {k: p.detach().clone().requires_grad_(True) for k, p in m.named_parameters()}
        stepped = {k: p - 0.1 * p.square() for k, p in base.items()}  # depends on base, twice
        out = torch.func.functional_call(m, stepped, (x,))
        grads = torch.autograd.grad(out.square().mean(), list(stepped.values()), create_graph=True)
        second = torch.autograd.grad(sum(g.sum() for g in grads), list(base.values()))
        results.append((out, grads, second))
    for a, b in zip(results[1], results[0]):
        assert rel_error(a if isinstance(a, torch.Tensor) else list(a),
                         b if isinstance(b, torch.Tensor) else list(b)) <= TOL
    assert_same_everything(theirs, ours, "functional_call")


def test_compiled_grouped_model_runs_per_layer_and_equals_torch():
    # Under torch.compile the hooks step aside and each layer's custom ops are traced.
    theirs, ours = pair("cpu")
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = x_of(6)
    assert rel_error(step(compiled, x), step(theirs, x)) <= TOL
    assert_same_everything(theirs, ours, "compiled")
    assert not stashes_left(ours) and not ours.__dict__.get(grouping._CALLS)


def test_a_removed_parametrization_is_not_grouped(monkeypatch):
    theirs, ours = pair("cpu")
    for m in (theirs, ours):
        torch.nn.utils.parametrize.remove_parametrizations(m.skip, "weight")  # skip: a plain conv now
        m.use_skip = True
    sizes = []
    real_grouped = sn_ops.grouped_train_forward
    monkeypatch.setattr(sn_ops, "grouped_train_forward",
                        lambda specs, weights: sizes.append(len(specs)) or real_grouped(specs, weights))
    assert_steps_equal(theirs, ours, x_of(), "after remove_parametrizations")
    assert sizes == [3]


def test_autocast_grouped_equals_per_layer():
    # Under bf16 autocast the SN weights stay fp32 (the power iteration and W / sigma too) and
    # the convolutions cast them: grouping changes none of it.
    _, per_layer = pair("cpu", grouped=False)
    _, grouped = pair("cpu")
    x = x_of(7)
    outs = []
    for m in (per_layer.float(), grouped.float()):
        m.use_skip = True
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x.float())
        out.float().square().mean().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for p, q in zip(per_layer.parameters(), grouped.parameters()):
        assert torch.equal(p.grad, q.grad)
    for a, b in zip(per_layer.state_dict().values(), grouped.state_dict().values()):
        assert torch.equal(a, b)
