"""Backend resolution: auto, GANKERN_IMPL, unavailable explicit impls, a missing native build."""

import warnings

import pytest
import torch

import gankern as gk
from gankern import _backend, _native

CPU = torch.device("cpu")


def test_auto_prefers_native_cpu_when_built():
    if _native.available("cpu"):
        assert _backend.resolve("auto", CPU) == "cpu"
    else:
        assert _backend.resolve("auto", CPU) == "reference"


def test_explicit_unavailable_impl_raises_naming_the_available_ones():
    with pytest.raises(ValueError, match="impl='cuda' is not available.*available: reference"):
        _backend.resolve("cuda", CPU)
    with pytest.raises(ValueError, match="has no cpu implementation"):
        _backend.resolve("cpu", CPU, implemented=("reference", "triton"), op="toy")
    with pytest.raises(ValueError, match="impl='cuda'"):
        gk.ops.ema_update_([torch.randn(3)], [torch.randn(3)], 0.1, impl="cuda")


def test_unknown_and_non_string_impl():
    with pytest.raises(ValueError, match="one of"):
        _backend.resolve("fast", CPU)
    with pytest.raises(TypeError, match="impl must be a str"):
        _backend.resolve(None, CPU)


def test_gankern_impl_overrides_auto(monkeypatch):
    monkeypatch.setenv("GANKERN_IMPL", "reference")
    assert _backend.resolve("auto", CPU) == "reference"
    monkeypatch.setenv("GANKERN_IMPL", "cuda")
    with pytest.raises(ValueError, match="from GANKERN_IMPL"):
        _backend.resolve("auto", CPU)


def test_triton_on_cpu_only_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not _backend.usable("triton", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.usable("triton", CPU) == _backend.triton_importable()


def test_missing_native_extension_warns_once_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(_native, "_C", None)
    monkeypatch.setattr(_native, "_loaded", True)
    monkeypatch.setattr(_native, "_load_error", "ImportError: pretend the build failed")
    monkeypatch.setattr(_native, "_warned", False)
    with pytest.warns(RuntimeWarning, match="native extension unavailable"):
        assert _backend.resolve("auto", CPU) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.resolve("auto", CPU) == "reference"  # no second warning
    s, p = [torch.randn(4)], [torch.randn(4)]
    gk.ops.ema_update_(s, p, 1.0)
    assert torch.equal(s[0], p[0])
    with pytest.raises(ValueError, match="impl='cpu' is not available"):
        gk.ops.ema_update_(s, p, 1.0, impl="cpu")


def test_env_impl_reads_gankern_impl_as_it_is_now(monkeypatch):
    # Read from os.environ's own mapping on every call (no KeyError path): a value set, changed,
    # emptied or removed after import is seen at once, as os.environ.get would see it.
    monkeypatch.delenv("GANKERN_IMPL", raising=False)
    assert _backend.env_impl() == "auto"
    monkeypatch.setenv("GANKERN_IMPL", "reference")
    assert _backend.env_impl() == "reference"
    assert not _backend.chosen_by_auto("auto")
    monkeypatch.setenv("GANKERN_IMPL", "")
    assert _backend.env_impl() == "auto"
    assert _backend.chosen_by_auto("auto")
    monkeypatch.delenv("GANKERN_IMPL")
    assert _backend.env_impl() == "auto"
