"""gk.gradient_penalty on a plain (unfused) D skips the all-zero part of torch's double backward
(gankern/train/zero_second_order.py) and still gives exactly torch's gradients: every parameter
gradient equal in float64 to the hand-written penalty, zero where torch gives zero and None
where torch gives None, for a penalty-only backward and for one with the D loss; fewer
convolution backward passes; and torch's own derivatives still send exact zeros on every edge
the module prunes (if a torch release changes a formula, this file fails first)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gankern as gk
from gankern.train import zero_second_order

B = 4


class ResBlockD(nn.Module):
    """An SNGAN-style residual D block: ReLU, 3x3 conv, ReLU, 3x3 conv, 2x2 average pool, plus a
    pooled 1x1 shortcut."""

    def __init__(self, cin, cout):
        super().__init__()
        self.c1, self.c2, self.sc = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1), nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.c2(F.relu(self.c1(F.relu(x))))
        return F.avg_pool2d(h, 2) + self.sc(F.avg_pool2d(x, 2))


def dcgan_d():
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, 2, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(16, 1, 4, 1, 0), nn.Flatten())


def resnet_d():
    return nn.Sequential(ResBlockD(3, 8), ResBlockD(8, 16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 1))


def pool_d():
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.Hardtanh(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, 1, 1),
                         nn.ReLU6(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 1))


def mlp_d():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 16),
                         nn.LeakyReLU(0.2), nn.Linear(16, 1))


def inplace_bn_d():
    """The PyTorch DCGAN tutorial's style: LeakyReLU(inplace=True) and BatchNorm (eval here, so
    the samples stay independent)."""
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(8, 16, 4, 2, 1),
                         nn.BatchNorm2d(16), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(16, 1, 4, 1, 0),
                         nn.Flatten()).eval()


def smooth_d():
    """No piecewise-linear op: nothing to prune, the result must not change either."""
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.Tanh(), nn.Conv2d(8, 8, 4, 2, 1), nn.Softplus(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 1))


MODELS = {"dcgan": dcgan_d, "resnet": resnet_d, "pools": pool_d, "mlp": mlp_d, "inplace_bn": inplace_bn_d,
          "smooth": smooth_d}


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(B, 3, 16, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(B, 3, 16, 16, generator=g, dtype=torch.float64)
    return real, fake, torch.rand(B, generator=g, dtype=torch.float64)


def _hand_written(D, real, fake, alpha, kind):
    x = (real + alpha.view(-1, 1, 1, 1) * (fake - real)) if kind == "wgan-gp" else real
    x = x.detach().requires_grad_(True)
    (g, ) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    n = g.flatten(1).norm(dim=1)
    return 10.0 * ((n - 1) ** 2).mean() if kind == "wgan-gp" else 5.0 * (n ** 2).mean()


def _grads(D, penalty_fn, with_loss, real, fake):
    D.zero_grad(set_to_none=True)
    loss = penalty_fn()
    if with_loss:
        loss = loss + D(fake).mean() - D(real).mean()
    loss.backward()
    return loss.detach(), [p.grad for p in D.parameters()]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
@pytest.mark.parametrize("with_loss", [False, True])
def test_gradients_equal_torch_double_backward(model, kind, with_loss):
    torch.manual_seed(1)
    D = MODELS[model]().double()
    real, fake, alpha = _data()
    want_loss, want = _grads(D, lambda: _hand_written(D, real, fake, alpha, kind), with_loss, real, fake)
    got_loss, got = _grads(D, lambda: gk.gradient_penalty(D, real, fake if kind == "wgan-gp" else None, kind=kind,
                                                          alpha=alpha if kind == "wgan-gp" else None),
                           with_loss, real, fake)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-12, atol=0)
    for (name, _), a, b in zip(D.named_parameters(), got, want):
        assert (a is None) == (b is None), f"{name}: gradient {'missing' if a is None else 'extra'}"
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=f"{name}")


def _conv_backward_calls(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::convolution_backward")


@pytest.mark.parametrize("model,saved", [("dcgan", 2), ("resnet", 6)])
def test_the_zero_pass_through_the_forward_graph_is_skipped(model, saved):
    """A penalty-only backward: torch runs every conv's backward once more on the zeros its
    piecewise-linear double backward sends; gankern does not (dcgan: the two convs below the
    LeakyReLUs; resnet: every conv, the shortcuts below the average pools included)."""
    torch.manual_seed(2)
    D = MODELS[model]().double()
    real, fake, alpha = _data(3)
    plain = _conv_backward_calls(lambda: _hand_written(D, real, fake, alpha, "wgan-gp").backward())
    ours = _conv_backward_calls(lambda: gk.gradient_penalty(D, real, fake, kind="wgan-gp", alpha=alpha).backward())
    assert plain - ours == saved


def test_nothing_is_pruned_without_a_piecewise_linear_op():
    torch.manual_seed(3)
    D = smooth_d().double()
    x = _data()[0].requires_grad_(True)
    out = D(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    assert zero_second_order.prune(out, g, x) == []


OPS = {"LeakyReluBackwardBackward0": lambda t: F.leaky_relu(t, 0.2), "ThresholdBackwardBackward0": F.relu,
       "HardtanhBackwardBackward0": F.hardtanh, "AvgPool2DBackwardBackward0": lambda t: F.avg_pool2d(t, 2),
       "MaxPool2DWithIndicesBackwardBackward0": lambda t: F.max_pool2d(t, 2)}


def test_every_pruned_node_type_is_listed_here():
    assert set(OPS) == set(zero_second_order.ZERO_INPUT_GRAD_NODES)


@pytest.mark.parametrize("node_name", sorted(OPS))
def test_torch_sends_exact_zeros_on_every_pruned_edge(node_name):
    """The premise, checked on torch itself: the second-order gradient each listed node sends to
    its input 1 is all zeros (float64, random weights and cotangents)."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    y = OPS[node_name](F.conv2d(x, w, padding=1))
    (gx,) = torch.autograd.grad((y * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum(), x,
                                create_graph=True)
    seen, stack, captured = set(), [gx.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == node_name:
            node.register_hook(lambda grad_inputs, grad_outputs: captured.append(grad_inputs[1]))
        stack.extend(n for n, _ in node.next_functions)
    (gx.square().sum()).backward()
    assert captured, f"{node_name} not in the graph"
    assert all(t is not None and t.abs().max().item() == 0.0 for t in captured)
