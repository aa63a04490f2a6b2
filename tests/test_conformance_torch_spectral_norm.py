"""Conformance of gk.spectral_norm with torch's documented spectral norm, on every backend.

What torch documents (torch.nn.utils.parametrizations.spectral_norm), restated here as checks:
- W_SN = W / sigma(W), sigma approximated by the power method: at registration 15 iterations, then
  n_power_iterations of u <- normalize(W v), v <- normalize(W^T u) on every access in training
  mode; sigma = u^T W v with the stored u, v; a 1-D weight is divided by its norm.
- W is seen as a matrix with `dim` first (default 0, 1 for ConvTranspose) and the rest flattened.
- state_dict keys `parametrizations.<name>.original` and `parametrizations.<name>.0._u` / `._v`.
- In eval mode nothing iterates, and the result is recomputed from the current W, u and v on
  every access: whatever wrote them (through .data, numpy, load_state_dict, an optimizer).
- Parametrized modules pickle only through state_dict(); deepcopy gives an independent module;
  parametrize.cached() caches W_SN for the duration of the context (torch's own cache).
- Legacy torch.nn.utils.spectral_norm checkpoints store `weight_orig`, `weight_u`, `weight_v`
  (the oldest format W_SN and no `weight_v`), with the same u, v and sigma = u^T W v.

Every test runs torch's own module beside gankern's (same RNG state, float64) and requires the
same outputs, gradients and buffers to 1e-12.
"""

import copy
import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import spectral_norm as legacy_sn
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from conftest import backends_for

import gankern as gk
from gankern.ops import spectral_norm as sn_ops
from gankern.testing import rel_error

BACKENDS = backends_for(sn_ops.IMPLEMENTED)
TOL = 1e-12
F64 = torch.float64
# The Triton interpreter costs ~30 ms a kernel: fewer steps there (every check still runs).
INTERPRETED = {"triton"} if not torch.cuda.is_available() else set()


def steps_for(backend, steps):
    return 1 if backend in INTERPRETED else steps


def cases(names, interpreted):
    """(name, backend) pairs: every name on the compiled backends, `interpreted` on the slow one."""
    return [(n, b) for b in BACKENDS for n in names if b not in INTERPRETED or n in interpreted]


def twins(make_layer, backend, seed=0, **options):
    """The same float64 layer under torch's SN and gankern's, registered from one RNG state."""
    torch.manual_seed(seed)
    base = make_layer().double()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    torch_sn(theirs, **options)
    torch.manual_seed(seed + 1)
    gk.spectral_norm(ours, impl=backend, **options)
    return theirs, ours


def sn_of(m, name="weight"):
    return m.parametrizations[name][0]


def original(m, name="weight"):
    return m.parametrizations[name].original


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def assert_same(ours, theirs, what, tol=TOL):
    err = rel_error(ours, theirs)
    assert err <= tol, f"{what}: differs from torch by {err:.2e}"


def assert_same_state(theirs, ours, what):
    for (name, t), (name_o, o) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert name == name_o
        assert_same(o, t, f"{what}: {name}")


# ----------------------------------------------------------------------------------------------
# Eval after every kind of write: the normalized weight follows the data, never a cache
# ----------------------------------------------------------------------------------------------
def _numpy_copy(dst, src):
    np.copyto(dst.detach().numpy(), src.numpy())  # a write no version counter sees


def _fused_adam_step(m, d):
    w = original(m)
    w.grad = d["w"].clone()
    torch.optim.Adam([w], lr=0.05, fused=True).step()
    w.grad = None


def _load_changed_state(m, d):
    sd = m.state_dict()
    sd["parametrizations.weight.original"] = d["w"]
    sd["parametrizations.weight.0._u"] = d["u"]
    m.load_state_dict(sd)


WRITES = {
    "weight .data.add_": lambda m, d: original(m).data.add_(d["w"]),
    "weight .data.clamp_ (WGAN clipping)": lambda m, d: original(m).data.add_(d["w"]).clamp_(-0.05, 0.05),
    "weight .data.copy_ (BigGAN-style EMA)": lambda m, d: original(m).data.copy_(d["w"]),
    "weight .data rebound": lambda m, d: setattr(original(m), "data", d["w"].clone()),
    "weight through numpy": lambda m, d: _numpy_copy(original(m), d["w"]),
    "weight fused Adam step": _fused_adam_step,
    "_u .data.copy_": lambda m, d: sn_of(m)._u.data.copy_(d["u"]),
    "_v .data.copy_": lambda m, d: sn_of(m)._v.data.copy_(d["v"]),
    "_u through numpy": lambda m, d: _numpy_copy(sn_of(m)._u, d["u"]),
    "load_state_dict": _load_changed_state,
}


def _write_data(seed):
    return {"w": randn(4, 5, seed=seed), "u": F.normalize(randn(4, seed=seed + 1), dim=0),
            "v": F.normalize(randn(5, seed=seed + 2), dim=0)}


# Interpreted: one write of each tensor and each path around version counters.
INTERPRETED_WRITES = ("weight .data.add_", "weight through numpy", "_u .data.copy_", "_v .data.copy_")


@pytest.mark.parametrize("write, backend", cases(WRITES, INTERPRETED_WRITES))
def test_eval_after_write_equals_torch(write, backend):
    theirs, ours = twins(lambda: nn.Linear(5, 4), backend)
    x = randn(3, 5, seed=7)
    theirs(x), ours(x)  # one training iteration first, so u and v are not the registration's
    theirs.eval(), ours.eval()
    with torch.no_grad():
        before = ours(x)
        assert_same(before, theirs(x), "eval before the write")
    ours(x).sum().backward()  # the eval forward with a gradient, before the write too
    for step in range(steps_for(backend, 2)):  # twice: a write after an eval forward of the first
        data = _write_data(10 * step)
        WRITES[write](theirs, data)
        WRITES[write](ours, data)
        with torch.no_grad():
            after = ours(x)
            assert_same(after, theirs(x), f"eval after write {step}")
        assert not torch.equal(after, before), "the write did not change the output: a vacuous test"
        before = after
        for m in (theirs, ours):
            original(m).grad = None
            m(x).square().sum().backward()
        assert_same(original(ours).grad, original(theirs).grad, f"eval gradient after write {step}")
        assert_same(ours.weight, theirs.weight, f"module.weight after write {step}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ema_of_sn_generator_sampled_in_eval(backend):
    # The ema-pytorch / BigGAN pattern: a deepcopy of G in eval mode whose parameters are
    # averaged through .data and whose buffers (SN's u, v) are copied, sampled after each step.
    def generator():
        return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4))

    def sn_generator(register):
        torch.manual_seed(0)
        g = generator().double()
        torch.manual_seed(1)
        for layer in (g[0], g[2]):
            register(layer)
        return g

    g_theirs = sn_generator(torch_sn)
    g_ours = sn_generator(lambda m: gk.spectral_norm(m, impl=backend))
    z = randn(5, 3, seed=3)
    runs = []
    for g in (g_theirs, g_ours):
        ema = copy.deepcopy(g).eval().requires_grad_(False)
        with torch.no_grad():
            ema(z)  # sampled once before any update
        runs.append((g, ema, torch.optim.Adam(g.parameters(), lr=0.05, betas=(0.0, 0.9))))
    for step in range(steps_for(backend, 3)):
        samples = []
        for g, ema, opt in runs:
            opt.zero_grad()
            g(randn(8, 3, seed=100 + step)).square().mean().backward()
            opt.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), g.parameters()):
                    p_ema.data.copy_(0.5 * p_ema.data + 0.5 * p.data)
                for b_ema, b in zip(ema.buffers(), g.buffers()):
                    b_ema.data.copy_(b.data)
                samples.append(ema(z))
        assert_same(samples[1], samples[0], f"EMA sample after step {step}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_remove_parametrizations_after_a_write(mode, backend):
    # torch documents that removal in training mode performs one more power iteration.
    theirs, ours = twins(lambda: nn.Conv2d(2, 3, 3), backend)
    x = randn(2, 2, 5, 5, seed=1)
    for m in (theirs, ours):
        m.train(mode == "train")
        with torch.no_grad():
            m(x)
        original(m).data.mul_(0.5).add_(0.1)
        parametrize.remove_parametrizations(m, "weight")
    assert_same(ours.weight, theirs.weight, f"weight left by removal in {mode} mode")
    assert not parametrize.is_parametrized(ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parametrize_cached_behaves_like_torch(backend):
    # Inside cached() torch computes W_SN once and serves it until the context ends, even after
    # a write (its documented cache); outside, the write shows. gankern goes through the same.
    theirs, ours = twins(lambda: nn.Linear(5, 4), backend)
    x = randn(3, 5, seed=2)
    for mode in ("train", "eval"):
        outs = []
        for m in (theirs, ours):
            m.train(mode == "train")
            with torch.no_grad():
                with parametrize.cached():
                    first = m(x)
                    original(m).data.add_(0.25)
                    second = m(x)
                outs.append((first, second, m(x)))
        for k, what in enumerate(("first access", "access after a write", "after the context")):
            assert_same(outs[1][k], outs[0][k], f"{mode}: {what} under cached()")
        assert torch.equal(outs[1][0], outs[1][1]) and not torch.equal(outs[1][1], outs[1][2])
        assert_same_state(theirs, ours, f"{mode}: buffers after cached()")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_through_an_eval_module(backend):
    # gradcheck perturbs its input in place, element by element, between calls: a cache would
    # hand back the unperturbed W/sigma and fail the numerical Jacobian.
    _, ours = twins(lambda: nn.Linear(3, 2), backend)
    sn = sn_of(ours).eval()
    w = original(ours).detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(sn, (w,))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in INTERPRETED and b != "reference"])
def test_compiled_eval_follows_writes(backend):
    # Under torch.compile the eval forward is a graph of custom ops: it reads W, u and v as
    # inputs on every call, so writes through .data show there too.
    theirs, ours = twins(lambda: nn.Linear(5, 4), backend)
    theirs.eval(), ours.eval()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = randn(3, 5, seed=0)
    for step in range(2):
        with torch.no_grad():
            assert_same(compiled(x), theirs(x), f"compiled eval, step {step}")
        for m in (theirs, ours):
            original(m).data.add_(0.5)
            sn_of(m)._u.data.mul_(-1.0)


# ----------------------------------------------------------------------------------------------
# Layers, dims, state_dict, train/eval sequences
# ----------------------------------------------------------------------------------------------
LAYERS = {  # name: (layer, input, torch's default dim)
    "Linear": (lambda: nn.Linear(5, 4), lambda s: randn(3, 5, seed=s), 0),
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3), lambda s: randn(2, 3, 7, seed=s), 0),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3), lambda s: randn(2, 3, 5, 5, seed=s), 0),
    "Conv3d": (lambda: nn.Conv3d(2, 3, 2), lambda s: randn(1, 2, 3, 3, 3, seed=s), 0),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3), lambda s: randn(2, 3, 5, seed=s), 1),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 4, 3), lambda s: randn(2, 3, 4, 4, seed=s), 1),
    "Embedding": (lambda: nn.Embedding(7, 4),
                  lambda s: torch.randint(0, 7, (3, 2), generator=torch.Generator().manual_seed(s)), 0),
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_state_dict_keys_buffers_and_dims(layer):
    make, _, default_dim = LAYERS[layer]
    theirs, ours = twins(make, "reference")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "parametrizations.weight.original" in ours.state_dict()
    w = original(ours)
    assert sn_of(ours).dim == sn_of(theirs).dim == default_dim
    assert sn_of(ours)._u.shape == (w.shape[default_dim],)
    assert sn_of(ours)._v.shape == (w.numel() // w.shape[default_dim],)
    assert_same_state(theirs, ours, "after registration (15 warm-up iterations)")


SEQUENCE = ("train", "train", "eval", "train", "eval")
# Interpreted: the layers whose (A, M, B) views differ (dim 0 with B > 1, dim 1, a plain matrix).
INTERPRETED_LAYERS = ("Conv2d", "ConvTranspose1d", "Embedding")


@pytest.mark.parametrize("layer, backend", cases(LAYERS, INTERPRETED_LAYERS))
def test_train_eval_sequence_equals_torch(layer, backend):
    make, make_x, _ = LAYERS[layer]
    n_iter = 2 if layer == "Conv2d" else 1
    theirs, ours = twins(make, backend, n_power_iterations=n_iter)
    opts = [torch.optim.Adam(m.parameters(), lr=0.05, betas=(0.0, 0.9)) for m in (theirs, ours)]
    for step, mode in enumerate(SEQUENCE if backend not in INTERPRETED else ("train", "eval", "train")):
        x = make_x(step)
        outs = []
        for m, opt in zip((theirs, ours), opts):
            m.train(mode == "train")
            opt.zero_grad()
            y = m(x)
            (y * randn(*y.shape, seed=50 + step)).sum().backward()
            opt.step()
            outs.append(y)
        assert_same(outs[1], outs[0], f"step {step} ({mode}): output")
        for (name, p_t), p_o in zip(theirs.named_parameters(), ours.parameters()):
            assert_same(p_o, p_t, f"step {step} ({mode}): {name} after the optimizer step")
        assert_same_state(theirs, ours, f"step {step} ({mode})")


@pytest.mark.parametrize("n_iter, backend", cases((1, 3), (3,)))
def test_training_step_is_the_documented_power_method(n_iter, backend):
    # Written out: n times u = W v / max(|W v|, eps), v = W^T u / max(|W^T u|, eps); then
    # y = x (W / (u^T W v))^T + b, for a Linear layer (dim 0: W is the weight itself).
    _, ours = twins(lambda: nn.Linear(6, 4), backend, n_power_iterations=n_iter)
    w, sn = original(ours).detach(), sn_of(ours)
    u, v = sn._u.clone(), sn._v.clone()
    for _ in range(n_iter):
        u = (w @ v) / max((w @ v).norm(), sn.eps)
        v = (w.T @ u) / max((w.T @ u).norm(), sn.eps)
    sigma = u @ w @ v
    x = randn(3, 6, seed=4)
    assert_same(ours(x), x @ (w / sigma).T + ours.bias.detach(), "training output")
    assert_same(sn._u, u, "u after the step")
    assert_same(sn._v, v, "v after the step")
    ours.eval()  # eval: the same sigma from the stored u, v, no further iteration
    assert_same(ours(x), x @ (w / sigma).T + ours.bias.detach(), "eval output")
    assert_same(sn._u, u, "u after an eval forward")


def test_vector_weight_is_divided_by_its_norm():
    theirs, ours = twins(lambda: nn.Linear(3, 4), "reference", name="bias")
    b = original(ours, "bias")
    assert_same(ours.bias, b / b.norm(), "1-D weight")
    assert_same(ours.bias, theirs.bias, "1-D weight against torch")


# ----------------------------------------------------------------------------------------------
# Copies: deepcopy, pickle, state_dict round trips
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_deepcopy_is_independent_and_equal(backend):
    theirs, ours = twins(lambda: nn.Conv2d(2, 3, 3), backend)
    x = randn(2, 2, 5, 5, seed=0)
    theirs(x), ours(x)
    copies = [copy.deepcopy(m) for m in (theirs, ours)]
    saved = [copy.deepcopy(m.state_dict()) for m in (theirs, ours)]
    for step in range(steps_for(backend, 2)):  # the copies train; the sources must not move
        ys = [c(randn(2, 2, 5, 5, seed=step + 1)) for c in copies]
        assert_same(ys[1], ys[0], f"deepcopy step {step}")
        for c in copies:
            original(c).data.add_(0.1)
    for m, sd in zip((theirs, ours), saved):
        assert all(torch.equal(t, sd[k]) for k, t in m.state_dict().items())
    for m in (*copies, theirs, ours):
        m.eval()
    with torch.no_grad():
        assert_same(copies[1](x), copies[0](x), "eval of the copies")
        assert_same(ours(x), theirs(x), "eval of the sources")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_behaves_like_torch(backend):
    theirs, ours = twins(lambda: nn.Linear(5, 4), backend)
    x = randn(3, 5, seed=0)
    theirs(x), ours(x)
    # A whole parametrized module pickles only through its state_dict, as torch documents.
    errors = []
    for m in (theirs, ours):
        with pytest.raises(RuntimeError) as info:
            pickle.dumps(m)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    # The parametrization alone pickles, buffers included, and computes the same W_SN.
    sn = pickle.loads(pickle.dumps(sn_of(ours).eval()))
    sn_t = pickle.loads(pickle.dumps(sn_of(theirs).eval()))
    with torch.no_grad():
        assert_same(sn(original(ours)), sn_t(original(theirs)), "unpickled parametrization")
    # The state_dict through torch.save / torch.load moves between the implementations.
    for src, dst_register in ((ours, torch_sn), (theirs, lambda m: gk.spectral_norm(m, impl=backend))):
        buf = io.BytesIO()
        torch.save(src.state_dict(), buf)
        buf.seek(0)
        torch.manual_seed(9)
        dst = dst_register(nn.Linear(5, 4).double())
        dst.load_state_dict(torch.load(buf))
        src.eval(), dst.eval()
        with torch.no_grad():
            assert_same(dst(x), src(x), "eval after a torch.save/torch.load round trip")
        src.train()


# ----------------------------------------------------------------------------------------------
# Legacy torch.nn.utils.spectral_norm checkpoints
# ----------------------------------------------------------------------------------------------
def legacy_critic(register, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(register(nn.Conv2d(2, 3, 3, padding=1)), nn.LeakyReLU(0.2),
                         register(nn.ConvTranspose2d(3, 2, 3)), nn.Flatten(),
                         register(nn.Linear(2 * 6 * 6, 1))).double()


def _x(seed):
    return randn(2, 2, 4, 4, seed=seed)


def trained_legacy_critic():
    legacy = legacy_critic(legacy_sn)
    opt = torch.optim.SGD(legacy.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        legacy(_x(step)).sum().backward()
        opt.step()
    return legacy


def _as_parametrization_keys(sd):
    """The legacy keys renamed by hand, for torch's own parametrization to load."""
    out = OrderedDict()
    for k, t in sd.items():
        for suffix, new in (("weight_orig", "parametrizations.weight.original"),
                            ("weight_u", "parametrizations.weight.0._u"),
                            ("weight_v", "parametrizations.weight.0._v")):
            if k.endswith(suffix):
                k = k[: -len(suffix)] + new
        out[k] = t
    return out


def saved_and_loaded(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("backend", BACKENDS)
def test_legacy_checkpoint_loads(backend):
    legacy = trained_legacy_critic()
    sd = saved_and_loaded(legacy)
    assert "0.weight_orig" in sd and "0.weight_u" in sd and "0.weight_v" in sd
    ours = legacy_critic(lambda m: gk.spectral_norm(m, impl=backend), seed=5)
    ours.load_state_dict(sd)  # strict
    assert_same(original(ours[0]), sd["0.weight_orig"], "loaded weight")
    assert_same(sn_of(ours[2])._v, sd["2.weight_v"], "loaded v")
    legacy.eval(), ours.eval()
    with torch.no_grad():
        assert_same(ours(_x(9)), legacy(_x(9)), "eval output after loading a legacy checkpoint")


# Training forwards on the interpreter are covered by test_train_eval_sequence_equals_torch.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in INTERPRETED])
def test_training_on_from_a_legacy_checkpoint(backend):
    # Training on from a legacy state is exactly what torch's parametrization does from it.
    sd = saved_and_loaded(trained_legacy_critic())
    ours = legacy_critic(lambda m: gk.spectral_norm(m, impl=backend), seed=5)
    theirs = legacy_critic(torch_sn, seed=6)
    ours.load_state_dict(sd)
    theirs.load_state_dict(_as_parametrization_keys(sd))
    for step in range(2):
        ys = [m(_x(20 + step)) for m in (theirs, ours)]
        assert_same(ys[1], ys[0], f"training step {step} after loading")
    assert_same_state(theirs, ours, "after training on")


def test_oldest_legacy_checkpoint_without_v_loads():
    # Before torch 1.0 the checkpoint held W_SN (`weight`) and no `weight_v`; torch's loader
    # derives v from them. The derived v must give the same sigma, hence the same output.
    legacy = trained_legacy_critic().eval()
    with torch.no_grad():
        legacy(_x(0))  # sets each layer's .weight to W_SN of the stored u, v
    old = OrderedDict()
    for k, t in legacy.state_dict().items():
        if k.endswith("weight_v"):
            old[k[: -len("_v")]] = getattr(legacy[int(k.split(".")[0])], "weight").clone()
        else:
            old[k] = t.clone()
    theirs, ours = legacy_critic(legacy_sn, seed=3), legacy_critic(gk.spectral_norm, seed=4)
    theirs.load_state_dict(copy.deepcopy(old))
    ours.load_state_dict(copy.deepcopy(old))
    theirs.eval(), ours.eval()
    with torch.no_grad():
        assert_same(ours(_x(5)), theirs(_x(5)), "eval after loading a v-less legacy checkpoint", 1e-9)
        assert_same(ours(_x(5)), legacy(_x(5)), "eval against the model that saved it", 1e-9)


def test_legacy_keys_are_left_alone_where_sn_was_removed():
    m = gk.spectral_norm(nn.Linear(3, 2).double())
    parametrize.remove_parametrizations(m, "weight")
    legacy = legacy_sn(nn.Linear(3, 2).double())
    result = m.load_state_dict(legacy.state_dict(), strict=False)
    assert "weight_orig" in result.unexpected_keys and "weight" in result.missing_keys


def test_converted_models_load_legacy_checkpoints():
    sd = trained_legacy_critic().state_dict()
    for make in (lambda: legacy_critic(legacy_sn, seed=2), lambda: legacy_critic(torch_sn, seed=2)):
        model = gk.convert_spectral_norm(make())
        model.load_state_dict(sd)
        assert_same(original(model[4]), sd["4.weight_orig"], "converted model, loaded weight")
        assert_same(sn_of(model[4])._u, sd["4.weight_u"], "converted model, loaded u")


# ----------------------------------------------------------------------------------------------
# Argument types: what torch accepts, gankern accepts
# ----------------------------------------------------------------------------------------------
ARGUMENTS = {
    "n_iter np.int64": dict(n_power_iterations=np.int64(2)),
    "n_iter tensor": dict(n_power_iterations=torch.tensor(2)),
    "eps int 0": dict(eps=0),
    "eps 0, dim np.int64": dict(eps=0.0, dim=np.int64(1)),
    "eps np.float32": dict(eps=np.float32(1e-6)),
    "dim -1": dict(dim=-1),
}


# Interpreted: the options the kernels see (eps = 0, two iterations, dim 1).
@pytest.mark.parametrize("options, backend", cases(ARGUMENTS, ("n_iter np.int64", "eps 0, dim np.int64")))
def test_argument_types_torch_accepts(options, backend):
    options = ARGUMENTS[options]
    theirs, ours = twins(lambda: nn.Linear(5, 4), backend, **options)
    assert isinstance(sn_of(ours).n_power_iterations, int) and isinstance(sn_of(ours).dim, int)
    for step in range(steps_for(backend, 2)):
        x = randn(3, 5, seed=step)
        assert_same(ours(x), theirs(x), f"step {step} with {options}")
    assert_same_state(theirs, ours, f"buffers with {options}")


@pytest.mark.parametrize("options, exc", [
    (dict(n_power_iterations=0), ValueError),
    (dict(n_power_iterations=-1), ValueError),
    (dict(dim=2), IndexError),
    (dict(dim=-3), IndexError),
])
def test_errors_torch_raises_are_raised(options, exc):
    for register in (torch_sn, gk.spectral_norm):
        m = nn.Linear(5, 4)
        with pytest.raises(exc):
            register(m, **options)
        assert not parametrize.is_parametrized(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_complex_weight(backend):
    # torch's SN takes complex weights (W^H in the power method, a complex vdot for sigma).
    # gankern runs them on its reference backend, which is torch's math; the fused backends
    # refuse them by name instead of computing something else.
    def make():
        return nn.Linear(5, 4, dtype=torch.complex128)

    if backend != "reference":
        m = make()
        with pytest.raises(ValueError, match="complex.*real-only"):
            gk.spectral_norm(m, impl=backend)
        assert not parametrize.is_parametrized(m)
    for impl in ("auto", "reference"):
        torch.manual_seed(0)
        base = make()
        theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
        torch.manual_seed(1)
        torch_sn(theirs)
        torch.manual_seed(1)
        gk.spectral_norm(ours, impl=impl)
        x = torch.randn(3, 5, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
        for mode in ("train", "eval"):
            theirs.train(mode == "train"), ours.train(mode == "train")
            ys = [m(x) for m in (theirs, ours)]
            assert torch.equal(ys[1], ys[0]), f"complex {mode} output, impl={impl}"
            for y, m in zip(ys, (theirs, ours)):
                y.abs().sum().backward()
        assert torch.equal(original(ours).grad, original(theirs).grad)
