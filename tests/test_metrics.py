"""Mode metrics and digits metrics on inputs whose answers are known."""

import math

import pytest
import torch

from gankern.data import grid, load_digits, ring
from gankern.metrics import digits_metrics, frechet_distance, mode_metrics


def test_true_samples_cover_every_mode():
    for data in (ring(), grid()):
        m = mode_metrics(data.sample(2500, torch.Generator().manual_seed(0)), data.centers, data.std)
        assert m["modes"] == len(data.centers) and m["hq"] > 0.98


def test_collapsed_and_off_mode_samples():
    r = ring()
    three = r.centers[torch.arange(2500) % 3] + 0.01 * torch.randn(2500, 2)
    m = mode_metrics(three, r.centers, r.std)
    assert m["modes"] == 3 and m["hq"] == 1.0
    far = r.centers[torch.arange(2500) % 8] + 0.2  # 0.28 from each mode: 14 std
    assert mode_metrics(far, r.centers, r.std) == {"modes": 0, "n_modes": 8, "hq": 0.0, "per_mode": [0] * 8}


def test_one_percent_threshold_and_three_std_boundary():
    r = ring()
    x = torch.full((2500, 2), 10.0)
    x[:24] = r.centers[0]
    x[24:49] = r.centers[1]  # 25 of 2500 = exactly 1%
    x[49] = r.centers[2] + torch.tensor([0.059, 0.0])  # inside 3 std (0.06)
    x[50] = r.centers[2] + torch.tensor([0.061, 0.0])  # outside
    m = mode_metrics(x, r.centers, r.std)
    assert m["modes"] == 1 and m["per_mode"][:3] == [24, 25, 1]
    assert m["hq"] == pytest.approx(50 / 2500)


def test_nan_samples_are_never_high_quality():
    r = ring()
    x = r.centers[torch.arange(100) % 8].clone()
    x[:50] = float("nan")
    assert mode_metrics(x, r.centers, r.std)["hq"] == pytest.approx(0.5)


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    b = torch.randn(200000, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 2.0, 1.5], dtype=torch.float64) + 1
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (s_a - s_b)^2 = 3 + 1 + 0 + 1
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_digits_metrics_on_real_and_collapsed_digits():
    x, y = load_digits(return_labels=True)
    real = digits_metrics(x)
    assert real["classes"] == 10 and real["kl"] < 0.01 and abs(real["fd"]) < 1e-6
    ones = digits_metrics(x[y == 1])
    assert ones["classes"] == 1 and ones["kl"] == pytest.approx(math.log(10), rel=0.02)
    assert ones["fd"] > 10 * max(real["fd"], 1.0)
    noise = digits_metrics(torch.rand(500, 64) * 2 - 1)
    assert noise["fd"] > ones["fd"]
    with pytest.raises(ValueError, match="samples must be"):
        digits_metrics(torch.zeros(3, 7))
