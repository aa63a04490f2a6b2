"""The CPU backward that returns dx and db from one pass (_native.bias_act_grad_db_cpu): dx equal
to the mode-1 kernel's bit for bit, db equal to the float64 sum of dx over every axis but the
channel's, for every dense layout (runs along the channel, channels_last and Linear rows), every
dtype, odd sizes, huge and denormal magnitudes, and the same bits with 1 and 2 threads."""

import pytest
import torch

from gankern import _native, testing
from gankern.ops.bias_act import kernel_form

pytestmark = pytest.mark.skipif(not _native.available("cpu"), reason="native CPU extension not built")

# (shape, dim, channels_last): runs of `inner` > 1, rows of C (inner == 1) and a single run.
LAYOUTS = [((3, 5, 7, 9), 1, False), ((4, 6, 5, 3), 1, True), ((33, 127), 1, False), ((2, 3, 11), 2, False),
           ((1, 4, 1, 1), 1, False), ((5, 3, 40, 40), 1, False), ((16, 24, 20, 20), 1, True)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _inputs(shape, dim, channels_last, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    dy = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape[dim], generator=g, dtype=torch.float64).to(_acc(dtype))
    return x, b, dy


def _grad_db(x, b, dy, dim, act="lrelu", alpha=0.2, gain=1.0, clamp=None):
    code, alpha, gain = kernel_form(act, alpha, gain)
    return _native.bias_act_grad_db_cpu(code, x, b, dy, alpha, gain, clamp, x.stride(dim), x.shape[dim])


def _grad(x, b, dy, dim, act="lrelu", alpha=0.2, gain=1.0, clamp=None):
    code, alpha, gain = kernel_form(act, alpha, gain)
    return _native.bias_act(1, code, x, b, dy, None, alpha, gain, clamp, x.stride(dim), x.shape[dim], "cpu")


@pytest.mark.parametrize("shape,dim,channels_last", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dx_is_the_gradient_kernels_and_db_its_sum(shape, dim, channels_last, dtype):
    x, b, dy = _inputs(shape, dim, channels_last, dtype)
    dx, db = _grad_db(x, b, dy, dim)
    assert torch.equal(dx, _grad(x, b, dy, dim)), "dx differs from the mode-1 kernel's"
    assert dx.stride() == x.stride() and db.dtype == b.dtype and db.shape == b.shape
    dims = [i for i in range(x.dim()) if i != dim]
    ref = dx.double().sum(dims)  # the sum of the rounded dx, as torch's dx.sum() would see it
    testing.assert_close_to_reference(db, ref, _acc(dtype), name="db")


@pytest.mark.parametrize("act", ["tanh", "silu", "elu", "linear"])
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_every_activation_and_clamp(act, clamp):
    x, b, dy = _inputs((4, 6, 5, 7), 1, False, torch.float32, seed=3)
    dx, db = _grad_db(x, b, dy, 1, act=act, alpha=1.0, gain=1.4, clamp=clamp)
    assert torch.equal(dx, _grad(x, b, dy, 1, act=act, alpha=1.0, gain=1.4, clamp=clamp))
    testing.assert_close_to_reference(db, dx.double().sum((0, 2, 3)), torch.float32, name="db")


@pytest.mark.parametrize("scale", [1e-41, 1e-30, 1e30])
def test_denormal_and_huge_magnitudes(scale):
    x, b, dy = _inputs((3, 8, 6, 6), 1, False, torch.float32, scale=scale, seed=5)
    b.zero_()  # a unit bias would swamp inputs this small
    dx, db = _grad_db(x, b, dy, 1)
    assert torch.isfinite(db).all()
    testing.assert_close_to_reference(db, dx.double().sum((0, 2, 3)), torch.float32, name="db")


@pytest.mark.parametrize("shape,dim,channels_last", [((8, 64, 32, 32), 1, False), ((8, 64, 16, 16), 1, True)])
def test_same_bits_for_any_thread_count(shape, dim, channels_last):
    """Large enough to run in parallel: the chunks and the order of the partial sums depend on
    the sizes only."""
    x, b, dy = _inputs(shape, dim, channels_last, torch.float32, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grad_db(x, b, dy, dim)
        torch.set_num_threads(2)
        two = _grad_db(x, b, dy, dim)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_empty_x_gives_zero_db():
    x, b, dy = _inputs((0, 5, 3), 1, False, torch.float32)
    dx, db = _grad_db(x, b, dy, 1)
    assert dx.shape == x.shape and torch.equal(db, torch.zeros(5))


def test_bad_input_names_the_argument():
    x, b, dy = _inputs((2, 5, 3), 1, False, torch.float32)
    with pytest.raises(ValueError, match="b is required"):
        _grad_db(x, None, dy, 1)
    with pytest.raises(ValueError, match="dy"):
        _grad_db(x, b, dy[:1], 1)
    with pytest.raises((ValueError, TypeError), match="b"):
        _grad_db(x, b[:4], dy, 1)
