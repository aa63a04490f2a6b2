"""GANTrainer with plain nn.Sequential models, as a new user writes them (issue 18): the latent
size comes from G's first Linear, and GANTrainer.load(path) rebuilds both models from the
checkpoint's plain-data description, without model code and without pickled classes."""

import pytest
import torch
from torch import nn

import gankern as gk
from gankern.train import models


def _plain_pair():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.1), nn.Linear(16, 1))
    return G, D


def test_z_dim_is_read_from_the_first_linear_of_g():
    G, D = _plain_pair()
    assert gk.train.GANTrainer(G, D, ema=None).z_dim == 5


def test_a_g_without_a_latent_size_is_refused_with_the_way_out():
    G = nn.Sequential(nn.Unflatten(1, (5, 1, 1)), nn.ConvTranspose2d(5, 2, 4), nn.Flatten(), nn.Linear(32, 2))
    _, D = _plain_pair()
    with pytest.raises(ValueError, match="z_dim.*pass z_dim="):
        gk.train.GANTrainer(G, D)
    assert gk.train.GANTrainer(G, D, z_dim=5, ema=None).z_dim == 5


@pytest.mark.parametrize("sn", [False, True])
def test_load_rebuilds_plain_sequential_models_and_continues_identically(tmp_path, sn):
    G, D = _plain_pair()
    kw = dict(loss="hinge", reg=gk.train.R1(gamma=1.0, every=2), ema=0.9, spectral_norm=sn, batch_size=16)
    trainer = gk.train.GANTrainer(G, D, **kw)
    data = gk.data.ring()
    trainer.fit(data, steps=3, progress=False)
    trainer.save(tmp_path / "ck.pt")
    loaded = gk.train.GANTrainer.load(tmp_path / "ck.pt")
    assert type(loaded.G) is nn.Sequential and loaded.step_count == 3
    assert torch.equal(loaded.sample(8), trainer.sample(8))
    trainer.fit(data, steps=5, progress=False)
    loaded.fit(data, steps=5, progress=False)
    for a, b in zip(trainer.G.state_dict().values(), loaded.G.state_dict().values()):
        assert torch.equal(a, b)


def test_every_listed_layer_round_trips_through_its_spec():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (3, 4, 4)), nn.Conv2d(3, 4, 3, stride=1, padding=1, bias=False),
                        nn.BatchNorm2d(4), nn.SiLU(), nn.ConvTranspose2d(4, 2, 2, stride=2, output_padding=0),
                        nn.ELU(0.5), nn.Flatten(), nn.LayerNorm(128), nn.GELU(approximate="tanh"),
                        nn.Dropout(0.0), nn.Linear(128, 8), nn.BatchNorm1d(8), nn.Softplus(2.0, 10.0),
                        nn.Tanh(), nn.Sigmoid(), nn.Identity(), nn.ReLU(), nn.LeakyReLU(0.3))
    assert {type(m) for m in net} == set(models.SEQUENTIAL_LAYERS)
    spec = models.spec_of(net)
    rebuilt = models.build(spec)
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    x = torch.randn(3, 48)
    assert repr(rebuilt) == repr(net)
    assert torch.equal(rebuilt(x), net(x))


def test_a_custom_module_still_needs_g_and_d_passed_to_load(tmp_path):
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.z_dim = 5
            self.net = nn.Linear(5, 2)

        def forward(self, z):
            return self.net(z)

    _, D = _plain_pair()
    trainer = gk.train.GANTrainer(Custom(), D, ema=None)
    trainer.save(tmp_path / "ck.pt")
    assert models.spec_of(trainer.G) is None
    with pytest.raises(gk.train.checkpoint.CheckpointError, match="pass G= and D="):
        gk.train.GANTrainer.load(tmp_path / "ck.pt")
    assert gk.train.GANTrainer.load(tmp_path / "ck.pt", G=Custom()).step_count == 0
