"""gk.nn.fuse_bias_act on critics written the way popular repositories write them: the function
(outputs, parameter gradients, the gradient penalty's double backward) stays the same, every
state_dict key stays, checkpoints load strictly both ways, and the report says exactly what was
fused and what was left."""

import copy
import io
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import gankern as gk
from gankern.nn.bias_act import DeferredBiasAct


class DCGANCritic(nn.Module):
    """The DCGAN D of WGAN-GP code bases: no BatchNorm (the penalty is per sample), biases on."""

    def __init__(self, nc=3, ndf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, 1, 4, 1, 0))

    def forward(self, x):
        return self.main(x).view(-1)


class DCGANDiscriminatorBN(nn.Module):
    """The PyTorch-examples DCGAN D, with conv biases on: Conv -> BN -> LeakyReLU in the middle."""

    def __init__(self, nc=3, ndf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, 1, 4, 1, 0), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1)


class MLPCritic(nn.Module):
    """The WGAN-GP toy critic (Linear/ReLU x3, Linear), built from nested blocks; the first
    layer's Sequential ends before its activation, which sits in the parent."""

    def __init__(self, dim=16):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Linear(i, o), nn.ReLU(True))

        self.net = nn.Sequential(OrderedDict([
            ("fc1", nn.Sequential(nn.Linear(2, dim))), ("act1", nn.ReLU(True)),
            ("b2", block(dim, dim)), ("b3", block(dim, dim)), ("out", nn.Linear(dim, 1))]))

    def forward(self, x):
        return self.net(x).view(-1)


class DBlock(nn.Module):
    """SNGAN's ResNet D block: residual branch as a Sequential, summed in forward()."""

    def __init__(self, cin, cout, down, first=False):
        super().__init__()
        self.residual = nn.Sequential(*([] if first else [nn.ReLU()]),
                                      spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1)), nn.ReLU(),
                                      spectral_norm(nn.Conv2d(cout, cout, 3, 1, 1)),
                                      nn.AvgPool2d(2) if down else nn.Identity())
        self.learnable_sc = down or cin != cout
        if self.learnable_sc:
            self.shortcut = nn.Sequential(spectral_norm(nn.Conv2d(cin, cout, 1)),
                                          nn.AvgPool2d(2) if down else nn.Identity())

    def forward(self, x):
        return self.residual(x) + (self.shortcut(x) if self.learnable_sc else x)


class ResNetCritic(nn.Module):
    def __init__(self, ch=4):
        super().__init__()
        self.blocks = nn.Sequential(DBlock(3, ch, True, first=True), DBlock(ch, ch, True), DBlock(ch, ch, False))
        self.relu = nn.ReLU()
        self.linear = spectral_norm(nn.Linear(ch, 1))

    def forward(self, x):
        return self.linear(self.relu(self.blocks(x)).sum([2, 3])).view(-1)


# (factory, input shape, fused pairs, left layers)
CRITICS = {
    "dcgan-wgangp": (DCGANCritic, (3, 3, 32, 32),
                     [("main.0", "main.1", "lrelu"), ("main.2", "main.3", "lrelu"), ("main.4", "main.5", "lrelu")],
                     ["main.6"]),
    # The conv biases before BN are left; BN's own shift is fused with the LeakyReLU after it.
    "dcgan-bn": (DCGANDiscriminatorBN, (3, 3, 32, 32),
                 [("main.0", "main.1", "lrelu"), ("main.3", "main.4", "lrelu"), ("main.6", "main.7", "lrelu"),
                  ("main.8", "main.9", "sigmoid")], ["main.2", "main.5"]),
    "wgangp-mlp": (MLPCritic, (5, 2),
                   [("net.fc1.0", "net.act1", "relu"), ("net.b2.0", "net.b2.1", "relu"),
                    ("net.b3.0", "net.b3.1", "relu")], ["net.out"]),
    "sngan-resnet": (ResNetCritic, (2, 3, 16, 16),
                     [("blocks.0.residual.0", "blocks.0.residual.1", "relu"),
                      ("blocks.1.residual.1", "blocks.1.residual.2", "relu"),
                      ("blocks.2.residual.1", "blocks.2.residual.2", "relu")],
                     ["blocks.0.residual.2", "blocks.0.shortcut.0", "blocks.1.residual.3", "blocks.1.shortcut.0",
                      "blocks.2.residual.3", "linear"]),
}


def _r1_and_grads(D, x):
    """D's output, and the parameter gradients of mean(D) + R1 (first and double backward)."""
    x = x.detach().requires_grad_(True)
    out = D(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    loss = out.mean() + g.square().flatten(1).sum(1).mean()
    grads = torch.autograd.grad(loss, [p for p in D.parameters()])
    return out.detach(), grads


@pytest.mark.parametrize("name", list(CRITICS))
def test_third_party_critic_same_function_same_checkpoints(name):
    factory, shape, want_fused, want_left = CRITICS[name]
    torch.manual_seed(0)
    D = factory().double()
    fused, report = gk.nn.fuse_bias_act(copy.deepcopy(D), return_report=True)
    assert report.fused == want_fused
    assert sorted(layer for layer, _ in report.left) == sorted(want_left)
    assert len([m for m in fused.modules() if isinstance(m, DeferredBiasAct)]) == len(want_fused)
    # Every key, in order, with the same tensors.
    assert list(fused.state_dict()) == list(D.state_dict())
    for k, v in D.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v), k

    x = torch.randn(shape, dtype=torch.float64)
    out, grads = _r1_and_grads(D, x)
    out_f, grads_f = _r1_and_grads(fused, x)
    torch.testing.assert_close(out_f, out, rtol=1e-12, atol=1e-12)
    for g, gf in zip(grads, grads_f):
        torch.testing.assert_close(gf, g, rtol=1e-10, atol=1e-12)
    # Buffers moved the same way (BatchNorm statistics, num_batches_tracked, spectral-norm u/v).
    for k, v in D.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[k], v, rtol=1e-12, atol=1e-12, msg=k)

    # An old checkpoint (another original model's) loads strictly into the fused model ...
    torch.manual_seed(1)
    other = factory().double()
    fused.load_state_dict(other.state_dict(), strict=True)
    torch.testing.assert_close(fused(x), other(x), rtol=1e-12, atol=1e-12)
    # ... and a fused checkpoint strictly into the original code, through a file.
    buf = io.BytesIO()
    torch.save(fused.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(2)
    fresh = factory().double()
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    torch.testing.assert_close(fresh(x), fused(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum, track", [(0.1, True), (None, True), (0.1, False)])
def test_batchnorm_shift_fused_train_and_eval(momentum, track):
    """BN(affine) -> act: BN normalizes and scales, the activation adds BN's shift. Statistics,
    buffer updates and the function stay BatchNorm's, in training and in eval."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(3, 6, bias=False), nn.BatchNorm1d(6, momentum=momentum, track_running_stats=track),
                      nn.Tanh(), nn.Unflatten(1, (6, 1, 1)),
                      nn.BatchNorm2d(6, momentum=momentum, track_running_stats=track), nn.ELU()).double()
    with torch.no_grad():
        for m in D.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    fused, report = gk.nn.fuse_bias_act(copy.deepcopy(D), return_report=True)
    assert report.fused == [("1", "2", "tanh"), ("4", "5", "elu")] and report.left == []
    for step in range(3):
        x = torch.randn(5, 3, dtype=torch.float64)
        out, grads = _r1_and_grads(D, x)
        out_f, grads_f = _r1_and_grads(fused, x)
        torch.testing.assert_close(out_f, out, rtol=1e-12, atol=1e-12)
        for g, gf in zip(grads, grads_f):
            torch.testing.assert_close(gf, g, rtol=1e-10, atol=1e-12)
    assert list(fused.state_dict()) == list(D.state_dict())
    for k, v in D.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[k], v, rtol=1e-12, atol=1e-12, msg=k)
    D.eval()
    fused.eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x), D(x), rtol=1e-12, atol=1e-12)


def test_float32_critic_and_report_logged(caplog):
    torch.manual_seed(0)
    D = DCGANCritic()
    with caplog.at_level(logging.INFO, logger="gankern"):
        fused = gk.nn.fuse_bias_act(copy.deepcopy(D))  # the documented contract: returns the model
    assert isinstance(fused, DCGANCritic)
    assert "fused 3, left 1" in caplog.text and "main.6" in caplog.text
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fused(x), D(x), rtol=1e-5, atol=1e-6)


def test_what_is_left_and_why():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda m, i, o: None)

    class OwnForwardSequential(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 0.5

    model = nn.Sequential(OrderedDict([
        ("a", shared), ("a_act", nn.ReLU()), ("b", shared), ("b_act", nn.Tanh()),
        ("c", hooked), ("c_act", nn.ReLU()),
        ("d", ScaledLinear(4, 4)), ("d_act", nn.ReLU()),
        ("e", nn.Linear(4, 4)), ("e_act", nn.Softplus(beta=2.0)),
        ("f", nn.Linear(4, 4)), ("f_act", nn.GELU()),
        ("g", OwnForwardSequential(nn.Linear(4, 4), nn.ReLU())),
        ("h", nn.Linear(4, 4)), ("i", nn.Identity()), ("h_act", nn.SELU()),
        # torch's legacy spectral norm: a forward pre-hook computes the weight, the bias is untouched.
        ("j", nn.utils.spectral_norm(nn.Linear(4, 4))), ("j_act", nn.LeakyReLU(0.1))]))
    D = model.double()
    fused, report = gk.nn.fuse_bias_act(copy.deepcopy(D), return_report=True)
    why = dict(report.left)
    # The Identity between h and its act passes its input on.
    assert report.fused == [("h", "h_act", "selu"), ("j", "j_act", "lrelu")]
    assert list(fused.state_dict()) == list(D.state_dict())
    assert "shared" in why["a"] and "hooks" in why["c"] and "overrides" in why["d"]
    assert "Softplus" in why["e"] and "GELU" in why["f"] and "g.0" in why and "not visible" in why["g.0"]
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(fused(x), D(x), rtol=1e-12, atol=1e-12)
    # Fusing again changes nothing and says so.
    _, again = gk.nn.fuse_bias_act(fused, return_report=True)
    assert again.fused == [] and dict(again.left)["h"] == "already fused"
    torch.testing.assert_close(fused(x), D(x), rtol=1e-12, atol=1e-12)


def test_fused_model_copies_and_converts():
    torch.manual_seed(0)
    G = nn.Sequential(nn.ConvTranspose2d(4, 3, 4, 2, 1), nn.ReLU(), nn.Identity(),
                      nn.ConvTranspose2d(3, 2, 3, 1, 1), nn.Tanh())
    fused = gk.nn.fuse_bias_act(copy.deepcopy(G))
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(fused(x), G(x), rtol=1e-5, atol=1e-6)
    # A deep copy (and a pickled copy) reads its own layer's bias, not the original's.
    saved = G[0].bias.detach().clone()
    for clone in (copy.deepcopy(fused), _pickled(fused)):
        assert clone[1].layer is clone[0] and clone[0].forward.args[0] is clone[0]
        with torch.no_grad():
            clone[0].bias.add_(1.0)
            G[0].bias.add_(1.0)
        torch.testing.assert_close(clone(x), G(x), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            G[0].bias.copy_(saved)
        torch.testing.assert_close(fused(x), G(x), rtol=1e-5, atol=1e-6)
    # dtype conversion after fusing is seen by the fused path.
    torch.testing.assert_close(fused.double()(x.double()), G.double()(x.double()), rtol=1e-12, atol=1e-12)


def _pickled(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_layer_replaced_after_fusing_is_refused():
    """A converter run after fusing that swaps the layer for a new module holding the same bias
    Parameter would add the bias twice: the fused activation refuses to run instead."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 1))
    fused = gk.nn.fuse_bias_act(copy.deepcopy(D)).eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), D.eval()(x), rtol=1e-5, atol=1e-6)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(fused))
    assert synced[1].bias is not None and isinstance(synced[2], DeferredBiasAct)
    with pytest.raises(RuntimeError, match="replaced after fuse_bias_act"):
        synced(x)
    # Converting first, then fusing, is safe: SyncBatchNorm has its own forward and is left.
    _, report = gk.nn.fuse_bias_act(nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(D)), return_report=True)
    assert report.fused == [] and "SyncBatchNorm" in dict(report.left)["0"]
    restored = copy.deepcopy(fused)
    del restored[1].forward  # the layer's own forward back: it adds its bias again
    with pytest.raises(RuntimeError, match="add it twice"):
        restored(x)
