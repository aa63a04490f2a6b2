"""The cheap checks in front of gk.ops.bias_act (issue 16: a small activation's Python cost
was 2-3x torch's): they must accept exactly what the explaining checks accept.

Two shortcuts are covered: _native's one-pass tensor check, which now takes nn.Parameter (a
layer's bias arrives as one) but still sends any other Tensor subclass to the explaining checks,
and the per-(value, type) memo of the scalar arguments, which must never let a bad value through
because a similar good one was seen before.
"""

from __future__ import annotations

import sys

import pytest
import torch

from gankern import _native
from gankern.ops import bias_act
from gankern.ops.bias_act.reference import ACTS

bias_act_module = sys.modules["gankern.ops.bias_act"]  # gk.ops.bias_act is the function
NATIVE_CPU = _native.available("cpu")


class _Subclass(torch.Tensor):
    pass


@pytest.mark.skipif(not NATIVE_CPU, reason="native CPU kernels not built")
def test_one_pass_check_takes_parameters_and_refuses_other_subclasses():
    x, b, dy = torch.randn(2, 3, 4), torch.randn(3), torch.randn(2, 3, 4)
    lrelu = ACTS["lrelu"]
    assert _native._bias_act_args_ok(1, torch.nn.Parameter(x), torch.nn.Parameter(b), dy, None, 4, 3)
    assert _native._bias_act_args_ok(1, x, b, torch.nn.Parameter(dy), None, 4, 3)
    assert not _native._bias_act_args_ok(1, x.as_subclass(_Subclass), b, dy, None, 4, 3)
    assert not _native._bias_act_args_ok(1, x, b.as_subclass(_Subclass), dy, None, 4, 3)
    # A Parameter of the wrong shape or dtype is still refused, by the error naming it.
    with pytest.raises(ValueError, match="b must"):
        _native.bias_act(1, lrelu, x, torch.nn.Parameter(torch.randn(4)), dy, None, 0.2, 1.0, None, 4, 3)
    with pytest.raises(TypeError, match="b must"):
        _native.bias_act(1, lrelu, x, torch.nn.Parameter(b.double()), dy, None, 0.2, 1.0, None, 4, 3)
    expected = torch.where(x + b[:, None] > 0, dy, 0.2 * dy)
    got = _native.bias_act(1, lrelu, x.as_subclass(_Subclass), b, dy, None, 0.2, 1.0, None, 4, 3)
    torch.testing.assert_close(got.as_subclass(torch.Tensor), expected)


def test_scalar_memo_never_lets_a_bad_value_through():
    x, b = torch.randn(2, 3, 4), torch.randn(3)
    bias_act(x, b, "lrelu", alpha=1, gain=1.0)  # good values, now memoized
    with pytest.raises(TypeError, match="alpha"):
        bias_act(x, b, "lrelu", alpha=True)  # True == 1 and hashes alike, but bool is refused
    with pytest.raises(ValueError, match="gain"):
        bias_act(x, b, "lrelu", gain=float("nan"))
    with pytest.raises(ValueError, match="clamp"):
        bias_act(x, b, "lrelu", clamp=-1.0)
    bias_act(x, b, "swish")
    torch.testing.assert_close(bias_act(x, b, "swish"), torch.nn.functional.silu(x + b[:, None]))


def test_scalar_memo_keeps_the_sign_of_a_zero_gain():
    x, b = torch.randn(2, 3, 4), torch.randn(3)
    plus = bias_act(x, b, "relu", gain=0.0)
    minus = bias_act(x, b, "relu", gain=-0.0)  # -0.0 == 0.0 as a key: must not reuse +0.0
    assert not torch.signbit(plus).any()
    assert torch.signbit(minus[(x + b[:, None]) > 0]).all()


def test_scalar_memo_stays_bounded():
    x, b = torch.randn(2, 3), torch.randn(3)
    for i in range(300):
        bias_act(x, b, "lrelu", alpha=0.01 * (i + 1))
    assert len(bias_act_module._scalar_cache) <= 256
