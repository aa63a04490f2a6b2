"""ema_update_'s one-pass validation (_native.ema_fast_groups, issue 16): it accepts exactly the
everyday call and hands everything else to the full checks, and its overlap verdict, cached per
memory layout, cannot be reused for a layout it was not computed for."""

import pytest
import torch

import gankern as gk
from gankern import _native
from gankern.ops.ema import LeafRequiresGradError


def _lists(n=5, dtype=torch.float32, param_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(3 + 7 * i, generator=g).to(param_dtype or dtype) for i in range(n)]
    shadow = [torch.randn(p.shape, generator=g).to(dtype) for p in params]
    return shadow, params


@torch.no_grad()
def test_fast_path_matches_foreach_lerp_bit_for_bit_across_dtype_groups():
    shadow, params = _lists()
    s16, p16 = _lists(3, torch.float32, torch.bfloat16, seed=1)
    # interleaved dtype pairs (fp32/fp32, fp32/bf16, fp32/fp32, ...): one launch per pair type
    shadow = [t for pair in zip(shadow, s16) for t in pair] + shadow[3:]
    params = [t for pair in zip(params, p16) for t in pair] + params[3:]
    expected = [s.clone() for s in shadow]
    torch._foreach_lerp_(expected, [p.float() for p in params], 0.01)
    assert _native.ema_fast_groups(shadow, params, torch.is_grad_enabled()) is not None
    gk.ops.ema_update_(shadow, params, 0.01, impl="cpu")
    for got, want in zip(shadow, expected):
        assert torch.equal(got, want)


@torch.no_grad()
def test_fast_path_is_taken_for_the_everyday_call(monkeypatch):
    shadow, params = _lists()

    def full_checks_ran(*args, **kwargs):
        raise AssertionError("the full checks ran on a call the one-pass check accepts")

    monkeypatch.setattr(_native, "check_ema_args", full_checks_ran)
    gk.ops.ema_update_(shadow, params, 0.5, impl="cpu")


@torch.no_grad()
def test_cached_clear_layout_does_not_excuse_an_overlapping_one():
    shadow, params = _lists()
    for _ in range(2):  # the second call hits the cached verdict for this layout
        gk.ops.ema_update_(shadow, params, 0.1, impl="cpu")
    base = torch.zeros(40)
    overlapping = [base[:20], base[10:30]]  # same sizes as a clear pair, sharing 10 floats
    before = base.clone()
    with pytest.raises(ValueError, match="overlaps"):
        gk.ops.ema_update_(overlapping, [torch.ones(20), torch.ones(20)], 0.1, impl="cpu")
    assert torch.equal(base, before)
    clear = [base[:20], base[20:40]]
    gk.ops.ema_update_(clear, [torch.ones(20), torch.ones(20)], 0.1, impl="cpu")
    # a shadow aliasing its own param is refused too, after the clear layout was cached
    with pytest.raises(ValueError, match="overlaps"):
        gk.ops.ema_update_(clear, [clear[0], torch.ones(20)], 0.1, impl="cpu")


@pytest.mark.parametrize("case", ["length", "device_meta", "shape", "strided", "dtype", "empty"])
def test_unusual_calls_fall_through_to_the_named_errors(case):
    shadow, params = _lists(3)
    if case == "length":
        params = params[:2]
    elif case == "device_meta":
        params = params[:2] + [params[2].to("meta")]
    elif case == "shape":
        params[1] = torch.randn(99)
    elif case == "strided":
        shadow[1] = torch.randn(2 * shadow[1].numel())[::2]
    elif case == "dtype":
        params[0] = params[0].double()
    else:
        shadow, params = [], []
    assert _native.ema_fast_groups(shadow, params, False) is None
    before = [s.clone() for s in shadow]
    with torch.no_grad(), pytest.raises((ValueError, TypeError)):
        gk.ops.ema_update_(shadow, params, 0.1, impl="cpu")
    assert all(torch.equal(a, b) for a, b in zip(shadow, before))


def test_grad_tracked_shadow_in_grad_mode_still_refused():
    shadow, params = _lists(2)
    shadow[1].requires_grad_(True)
    assert _native.ema_fast_groups(shadow, params, True) is None
    with pytest.raises(LeafRequiresGradError, match=r"shadow\[1\]"):
        gk.ops.ema_update_(shadow, params, 0.1, impl="cpu")
    with torch.no_grad():
        gk.ops.ema_update_(shadow, params, 0.1, impl="cpu")  # fine under no_grad, as in torch
