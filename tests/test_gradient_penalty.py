"""gk.gradient_penalty against the plain-PyTorch recipe (autograd.grad with create_graph=True,
then the norm): the penalty and every D parameter gradient, for all kinds, both centers, an MLP
and a conv D, float64 and float32, every backend; plus the AMP recipe, return_norms,
reproducibility and bad input."""

import copy

import pytest
import torch
from conftest import DEVICE, backends_for
from torch import nn

import gankern as gk
from gankern import testing
from gankern.ops.norm_penalty import IMPLEMENTED

BACKENDS = backends_for(IMPLEMENTED)
KINDS = ["wgan-gp", "r1", "r2", "dragan"]
B = 5


def mlp_d():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.LeakyReLU(0.2), nn.Linear(9, 7), nn.Tanh(),
                         nn.Linear(7, 1))


def conv_d():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(6, 5, 3, stride=2),
                         nn.SiLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 1))


MODELS = {"mlp": (mlp_d, (B, 12)), "conv": (conv_d, (B, 3, 6, 6)),
          "mlp-fused": (mlp_d, (B, 12)), "conv-fused": (conv_d, (B, 3, 6, 6))}


# Fused Ds run with wgan-gp and r1 only: the x_hat of r2/dragan is covered unfused, and fusion
# changes D, not the point (keeps the Triton-interpreter time of the suite down).
KIND_MODEL = [(k, m) for m in MODELS for k in KINDS if not (m.endswith("-fused") and k in ("r2", "dragan"))]


def plain_gp(D, real, fake, kind, center, weight, alpha, noise):
    """The recipe from the papers, written without gankern."""
    if kind == "r1":
        x = real
    elif kind == "r2":
        x = fake
    elif kind == "wgan-gp":
        a = alpha.reshape(-1, *([1] * (real.dim() - 1)))
        x = real + a * (fake - real)
    else:
        a = alpha.reshape(-1, *([1] * (real.dim() - 1)))
        x_p = real + 0.5 * real.std() * noise
        x = real + a * (x_p - real)
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    n = g.reshape(g.shape[0], -1).norm(2, dim=1)
    factor = weight / 2 if kind in ("r1", "r2") else weight
    return factor * ((n - center) ** 2).mean(), n


def _inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(shape, generator=gen, dtype=torch.float64)
    fake = torch.randn(shape, generator=gen, dtype=torch.float64)
    alpha = torch.rand(shape[0], generator=gen, dtype=torch.float64)
    return real, fake, alpha


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("center", [0.0, 1.0])
@pytest.mark.parametrize("kind, model", KIND_MODEL)
def test_penalty_and_param_grads_match_plain_pytorch(kind, center, model, dtype, backend):
    make, shape = MODELS[model]
    torch.manual_seed(1)
    D64 = make().double()
    D = copy.deepcopy(D64).to(DEVICE, dtype)
    if model.endswith("-fused"):
        # Same function, bias+activation fused: the double backward runs through bias_act's
        # gradient ops (second order included for Tanh and SiLU).
        gk.nn.fuse_bias_act(D, impl=backend)
        assert sum(isinstance(m, gk.nn.BiasAct) for m in D.modules()) == 2
    real, fake, alpha = _inputs(shape)
    # dragan draws its noise in the input dtype: draw the same numbers for the reference.
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(7), dtype=dtype).double()
    ref_p, ref_n = plain_gp(D64, real, fake, kind, center, 3.0, alpha, noise)
    ref_p.backward()

    kw = dict(kind=kind, center=center, weight=3.0, return_norms=True, impl=backend)
    if kind in ("wgan-gp", "dragan"):
        kw["alpha"] = alpha.to(DEVICE, dtype)
    if kind == "dragan":
        kw["generator"] = torch.Generator(device="cpu").manual_seed(7)
    p, n = gk.gradient_penalty(D, real.to(DEVICE, dtype), fake.to(DEVICE, dtype), **kw)
    p.backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-5  # fp32 through a double backward
    testing.assert_close_to_reference(p, ref_p, dtype, name="penalty", tol=tol)
    testing.assert_close_to_reference(n, ref_n, dtype, name="norms", tol=tol)
    for (name, p_ref), p_gk in zip(D64.named_parameters(), D.parameters()):
        if p_ref.grad is None:  # the last bias does not move dD/dx: no gradient either way
            assert p_gk.grad is None or not p_gk.grad.any(), name
            continue
        testing.assert_close_to_reference(p_gk.grad, p_ref.grad, dtype, name=name, tol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_defaults_are_the_papers(backend):
    """wgan-gp/dragan: c=1, weight=10; r1/r2: (10/2) * mean(n^2)."""
    torch.manual_seed(0)
    D = mlp_d().double().to(DEVICE)
    real, fake, alpha = _inputs((B, 12))
    real, fake, alpha = real.to(DEVICE), fake.to(DEVICE), alpha.to(DEVICE)
    for kind, c, w in (("wgan-gp", 1.0, 10.0), ("r1", 0.0, 10.0), ("r2", 0.0, 10.0)):
        kw = {"alpha": alpha} if kind == "wgan-gp" else {}
        p = gk.gradient_penalty(D, real, fake, kind=kind, impl=backend, **kw)
        ref, _ = plain_gp(D, real, fake, kind, c, w, alpha, None)
        testing.assert_close_to_reference(p, ref, torch.float64, name=kind)


class _CountConvBackward(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts first-order conv backward kernels (a conv's double backward is plain convolutions)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def lrelu_conv_d():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(6, 5, 3, stride=2),
                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(5 * 2 * 2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_penalty_backward_skips_the_zero_backward_of_d(backend):
    """With piecewise-linear activations D(x_hat)'s own forward graph gets no gradient from the
    penalty (act'' = 0). Plain PyTorch still pushes zeros through it (leaky_relu's double
    backward returns zeros_like), a full conv backward per layer; the fused D skips it, and
    every parameter gradient stays equal, the biases' zeros included."""
    torch.manual_seed(2)
    D64 = lrelu_conv_d().double()
    D = gk.nn.fuse_bias_act(copy.deepcopy(D64), impl=backend).to(DEVICE)
    real, fake, alpha = _inputs((B, 3, 6, 6))
    ref_p, _ = plain_gp(D64, real, fake, "wgan-gp", 1.0, 10.0, alpha, None)
    with _CountConvBackward() as plain_count:
        ref_p.backward()
    assert plain_count.count > 0  # the zeros plain PyTorch pushes through D
    p = gk.gradient_penalty(D, real.to(DEVICE), fake.to(DEVICE), kind="wgan-gp", alpha=alpha.to(DEVICE),
                            impl=backend)
    with _CountConvBackward() as fused_count:
        p.backward()
    assert fused_count.count == 0
    testing.assert_close_to_reference(p, ref_p, torch.float64, name="penalty", tol=1e-12)
    for (name, p_ref), p_gk in zip(D64.named_parameters(), D.parameters()):
        if p_ref.grad is None:
            assert p_gk.grad is None, name
            continue
        assert p_gk.grad is not None, name
        if not p_ref.grad.any():  # a bias before a leaky ReLU: an exact zero either way
            assert not p_gk.grad.any(), name
            continue
        testing.assert_close_to_reference(p_gk.grad, p_ref.grad, torch.float64, name=name, tol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_bf16_autocast_fused_d(kind, backend):
    """A fused D under bf16 autocast (bf16 activations into bias_act, bf16 gradients into
    norm_penalty): the penalty and all D gradients stay within 2x of the plain recipe run under
    the same autocast, both measured against float64."""
    torch.manual_seed(3)
    D64 = conv_d().double()
    real, fake, alpha = _inputs((B, 3, 6, 6))
    ref_p, _ = plain_gp(D64, real, fake, kind, 1.0 if kind == "wgan-gp" else 0.0, 10.0, alpha, None)
    ref_p.backward()
    reached = [p.grad is not None for p in D64.parameters()]  # the last bias does not move dD/dx
    ref = [ref_p.detach()] + [p.grad for p in D64.parameters() if p.grad is not None]

    def run(D, penalty):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            p = penalty(D)
        p.float().backward()
        assert [q.grad is not None for q in D.parameters()] == reached
        return [p.detach()] + [q.grad for q in D.parameters() if q.grad is not None]

    plain_D = copy.deepcopy(D64).float().to(DEVICE)
    dev = [t.float().to(DEVICE) for t in (real, fake, alpha)]
    same = run(plain_D, lambda D: plain_gp(D, *dev[:2], kind, 1.0 if kind == "wgan-gp" else 0.0, 10.0,
                                            dev[2], None)[0])
    fused = gk.nn.fuse_bias_act(copy.deepcopy(D64).float().to(DEVICE), impl=backend)
    kw = {"alpha": dev[2]} if kind == "wgan-gp" else {}
    out = run(fused, lambda D: gk.gradient_penalty(D, dev[0], dev[1], kind=kind, impl=backend, **kw))
    assert out[0].dtype == torch.float32  # norm_penalty returns float32 for bf16 gradients
    testing.assert_close_to_reference(out, ref, torch.bfloat16, ref_same_dtype=same, tol=3e-2,
                                      name="penalty and D gradients")


def test_generator_reproducible_and_alpha_shapes():
    D = mlp_d()
    real, fake = torch.randn(B, 12), torch.randn(B, 12)
    for kind in ("wgan-gp", "dragan"):
        p1 = gk.gradient_penalty(D, real, fake, kind=kind, generator=torch.Generator().manual_seed(3))
        p2 = gk.gradient_penalty(D, real, fake, kind=kind, generator=torch.Generator().manual_seed(3))
        p3 = gk.gradient_penalty(D, real, fake, kind=kind, generator=torch.Generator().manual_seed(4))
        assert torch.equal(p1, p2) and not torch.equal(p1, p3)
    a = torch.rand(B)
    p_flat = gk.gradient_penalty(D, real, fake, kind="wgan-gp", alpha=a)
    p_col = gk.gradient_penalty(D, real, fake, kind="wgan-gp", alpha=a[:, None])
    assert torch.equal(p_flat, p_col)


def test_return_norms_are_detached_per_sample_norms():
    D = mlp_d()
    real = torch.randn(B, 12)
    p, n = gk.gradient_penalty(D, real, kind="r1", return_norms=True, weight=2.0)
    assert n.shape == (B,) and not n.requires_grad
    torch.testing.assert_close(p, (n ** 2).mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_amp_scaler_recipe(backend):
    """Scaled then unscaled gradients give the unscaled penalty; a disabled scaler is a no-op."""
    torch.manual_seed(0)
    D = mlp_d().to(DEVICE)
    real = torch.randn(B, 12, device=DEVICE) * 1e-3
    plain_p = gk.gradient_penalty(D, real, kind="r1", impl=backend)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 12)
    scaled_p = gk.gradient_penalty(D, real, kind="r1", scaler=scaler, impl=backend)
    torch.testing.assert_close(scaled_p, plain_p, rtol=1e-5, atol=0)
    off = torch.amp.GradScaler(DEVICE.type, enabled=False)
    assert torch.equal(gk.gradient_penalty(D, real, kind="r1", scaler=off, impl=backend), plain_p)
    # The full step: penalty.backward through scaler.scale reaches D scaled, step unscales.
    opt = torch.optim.SGD(D.parameters(), lr=0.0)
    scaler.scale(scaled_p).backward()
    scaler.unscale_(opt)
    grads_scaled = [None if p.grad is None else p.grad.clone() for p in D.parameters()]
    D.zero_grad(set_to_none=True)
    plain_p.backward()
    assert sum(a is not None for a in grads_scaled) >= 4
    for a, b in zip(grads_scaled, D.parameters()):
        if a is None:
            assert b.grad is None
        else:
            torch.testing.assert_close(a, b.grad, rtol=1e-4, atol=1e-8)


class WrongShapeD(nn.Module):
    def __init__(self, out_shape):
        super().__init__()
        self.lin = nn.Linear(12, 1)
        self.out_shape = out_shape

    def forward(self, x):
        return self.lin(x).expand(x.shape[0], 2).reshape(self.out_shape(x.shape[0]))


@pytest.mark.parametrize("bad, exc, match", [
    (dict(fake=torch.randn(B + 1, 12), kind="wgan-gp"), ValueError, "fake"),
    (dict(fake=None, kind="wgan-gp"), ValueError, "fake"),
    (dict(fake=None, kind="r2"), ValueError, "fake"),
    (dict(real=torch.ones(B, 12, dtype=torch.int64)), TypeError, "real"),
    (dict(fake=torch.ones(B, 12, dtype=torch.int32), kind="wgan-gp"), TypeError, "fake"),
    (dict(real=torch.randn(B)), ValueError, "real"),
    (dict(alpha=torch.rand(B, 2), kind="wgan-gp"), ValueError, "alpha"),
    (dict(alpha=torch.rand(B + 1), kind="wgan-gp"), ValueError, "alpha"),
    (dict(alpha=torch.rand(B), kind="r1"), ValueError, "alpha"),
    (dict(kind="wgan"), ValueError, "kind"),
    (dict(generator=3, kind="wgan-gp"), TypeError, "generator"),
    (dict(scaler=object()), TypeError, "scaler"),
    (dict(impl="nope"), ValueError, "impl"),
])
def test_bad_input_raises_and_changes_nothing(bad, exc, match):
    D = mlp_d()
    before = [p.detach().clone() for p in D.parameters()]
    args = dict(real=torch.randn(B, 12), fake=torch.randn(B, 12), kind="r1")
    args.update(bad)
    real = args.pop("real")
    fake = args.pop("fake")
    with pytest.raises(exc, match=match):
        gk.gradient_penalty(D, real, fake, **args)
    assert all(p.grad is None for p in D.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, D.parameters()))


@pytest.mark.parametrize("out_shape", [lambda b: (b, 2), lambda b: (2 * b,), lambda b: (1, 2 * b)])
def test_d_returning_wrong_shape_raises(out_shape):
    with pytest.raises(ValueError, match="D must return one score per sample"):
        gk.gradient_penalty(WrongShapeD(out_shape), torch.randn(B, 12), kind="r1")


def test_d_returning_non_tensor_or_detached_raises():
    with pytest.raises(TypeError, match="D must return a tensor"):
        gk.gradient_penalty(lambda x: x.sum().item(), torch.randn(B, 12), kind="r1")
    with pytest.raises(ValueError, match="does not depend"):
        gk.gradient_penalty(lambda x: x.detach().sum(1), torch.randn(B, 12), kind="r1")
