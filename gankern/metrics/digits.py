"""Digits metrics from a small classifier: classes covered, KL to uniform, Fréchet distance.

There is no Inception network for 8x8 digits, so a small MLP classifier is trained once on
scikit-learn's digits (seeded, a few seconds on a CPU) and cached. A generator that collapses
drops classes (classes covered falls, the KL of its class histogram to uniform rises); the
Fréchet distance of the classifier's penultimate features to the real data's (as FID does with
Inception features) also sees within-class quality.
"""

from __future__ import annotations

import os

import torch
from torch import nn

CLASSIFIER_VERSION = 1


def _cache_path() -> str:
    root = os.environ.get("GANKERN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gankern")
    return os.path.join(root, f"digits_classifier_v{CLASSIFIER_VERSION}.pt")


def _make_classifier() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def _train_classifier() -> nn.Sequential:
    from ..data.digits import load_digits

    x, y = load_digits(return_labels=True)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _make_classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # First use may come from inside a no_grad caller. One thread: for a model this small, more
    # threads only contend (7x slower measured on a loaded 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            _fit(model, opt, x, y, g)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _fit(model, opt, x, y, g):
    for _ in range(1000):
        idx = torch.randint(len(x), (128,), generator=g)
        # Light noise so the classifier also answers sensibly off the data manifold (GAN samples).
        xb = x[idx] + 0.1 * torch.randn(x[idx].shape, generator=g)
        loss = nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


_CACHE: dict = {}


def classifier() -> nn.Sequential:
    """The cached digits classifier (trained on first use, then loaded from GANKERN_CACHE or
    ~/.cache/gankern)."""
    if "model" in _CACHE:
        return _CACHE["model"]
    path = _cache_path()
    model = _make_classifier()
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    except (OSError, RuntimeError, ValueError):
        model = _train_classifier()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home only costs retraining next time
    model.requires_grad_(False)
    _CACHE["model"] = model
    return model


@torch.no_grad()
def _features_and_classes(x: torch.Tensor):
    model = classifier()
    x = x.detach().float().cpu().reshape(-1, 1, 8, 8)
    h = model[:-1](x)
    return h.double(), model[-1](h).argmax(1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, d) feature sets, in float64.
    tr((S_a S_b)^(1/2)) = sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2))), which is symmetric PSD."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def digits_metrics(samples: torch.Tensor, min_fraction: float = 0.01) -> dict:
    """{"classes": covered (>= min_fraction of samples), "kl": KL(histogram || uniform),
    "fd": Fréchet distance of classifier features to the real digits, "histogram": counts}."""
    if not isinstance(samples, torch.Tensor) or samples.numel() % 64 or samples.numel() == 0:
        raise ValueError(f"samples must be (N, 1, 8, 8) or (N, 64) digits, got "
                         f"{getattr(samples, 'shape', samples)}")
    from ..data.digits import load_digits

    feats, classes = _features_and_classes(samples)
    real_feats, _ = _features_and_classes(load_digits())
    hist = torch.bincount(classes, minlength=10).double()
    p = hist / hist.sum()
    nz = p > 0
    kl = float((p[nz] * (p[nz] * 10).log()).sum())
    return {"classes": int((p >= min_fraction).sum()), "kl": kl,
            "fd": frechet_distance(feats, real_feats), "histogram": hist.long().tolist()}


def classifier_accuracy() -> float:
    """Training-set accuracy of the cached classifier (a sanity figure for reports)."""
    from ..data.digits import load_digits

    x, y = load_digits(return_labels=True)
    _, pred = _features_and_classes(x)
    return float((pred == y).double().mean())
