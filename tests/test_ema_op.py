"""gk.ops.ema_update_: equality with the float64 reference on every backend, opcheck, compile."""

import random

import pytest
import torch
from conftest import DEVICE, backends_for

import gankern as gk
from gankern.ops.ema import IMPLEMENTED
from gankern.ops.ema.reference import ema_update_float64
from gankern.testing import ODD_SIZES, assert_close_to_reference, random_like_sizes

PAIRS = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
         (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)]


def _sizes(n_tensors, seed):
    rng = random.Random(seed)
    return [rng.choice(ODD_SIZES[:3] + (3, 64, 300, 1000)) for _ in range(n_tensors - 1)] + [ODD_SIZES[-1]]


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
@pytest.mark.parametrize("shadow_dtype,param_dtype", PAIRS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("n_tensors", [1, 37])
def test_equals_float64_reference(backend, shadow_dtype, param_dtype, n_tensors):
    sizes = _sizes(n_tensors, seed=n_tensors)
    shadow = random_like_sizes(sizes, shadow_dtype, DEVICE, seed=1)
    params = random_like_sizes(sizes, param_dtype, DEVICE, seed=2, scale=3.0)
    weight = 0.0625 if n_tensors == 1 else 0.71  # both branches of the two-sided lerp
    ref64 = ema_update_float64(shadow, params, weight)
    same_dtype = [s.clone() for s in shadow]
    gk.ops.ema_update_(same_dtype, params, weight, impl="reference")
    gk.ops.ema_update_(shadow, params, weight, impl=backend)
    # Per tensor: one unwritten tensor must not hide inside the norm of a long list.
    for i, (out, ref, same) in enumerate(zip(shadow, ref64, same_dtype)):
        assert out.dtype == shadow_dtype
        assert_close_to_reference(out, ref, shadow_dtype, ref_same_dtype=same, name=f"shadow[{i}]")


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_300_tensors_and_tensor_weight(backend):
    sizes = [1 + (i * 37) % 211 for i in range(300)]
    shadow = random_like_sizes(sizes, torch.float32, DEVICE, seed=3)
    params = random_like_sizes(sizes, torch.bfloat16, DEVICE, seed=4)
    weight = torch.tensor(0.013, device=DEVICE)
    ref64 = ema_update_float64(shadow, params, weight.item())
    gk.ops.ema_update_(shadow, params, weight, impl=backend)
    assert_close_to_reference(shadow, ref64, torch.float32)


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_large_update_takes_the_threaded_path(backend):
    # > 2^18 elements: the CPU kernel splits the work over OpenMP threads.
    shadow = random_like_sizes([300_001, 3], torch.float32, DEVICE, seed=11)
    params = random_like_sizes([300_001, 3], torch.bfloat16, DEVICE, seed=12)
    ref64 = ema_update_float64(shadow, params, 0.3)
    gk.ops.ema_update_(shadow, params, 0.3, impl=backend)
    for out, ref in zip(shadow, ref64):
        assert_close_to_reference(out, ref, torch.float32)


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_weight_zero_and_one_are_exact(backend):
    shadow = random_like_sizes([7, 4097], torch.float32, DEVICE, seed=5)
    params = random_like_sizes([7, 4097], torch.float32, DEVICE, seed=6)
    keep = [s.clone() for s in shadow]
    gk.ops.ema_update_(shadow, params, 0.0, impl=backend)
    assert all(torch.equal(a, b) for a, b in zip(shadow, keep))
    gk.ops.ema_update_(shadow, params, 1.0, impl=backend)
    assert all(torch.equal(a, b) for a, b in zip(shadow, params))


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_channels_last_and_empty_tensors(backend):
    s = torch.randn(2, 3, 5, 7, device=DEVICE).to(memory_format=torch.channels_last)
    p = torch.randn(2, 3, 5, 7, device=DEVICE).to(memory_format=torch.channels_last)
    e_s, e_p = torch.empty(0, device=DEVICE), torch.empty(0, device=DEVICE)
    ref = ema_update_float64([s], [p], 0.25)[0]
    gk.ops.ema_update_([s, e_s], [p, e_p], 0.25, impl=backend)
    assert s.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(s, ref, torch.float32)


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
@pytest.mark.parametrize("weight", [0.25, 0.75])
def test_nan_and_inf_follow_the_reference(backend, weight):
    # Never masked: wherever torch's lerp gives NaN/Inf, so does every backend, and vice versa.
    s = torch.tensor([1.0, float("nan"), 2.0, 0.5, float("inf")], device=DEVICE)
    p = torch.tensor([float("inf"), 1.0, float("nan"), 0.25, 3.0], device=DEVICE)
    ref = [s.clone()]
    gk.ops.ema_update_(ref, [p], weight, impl="reference")
    gk.ops.ema_update_([s], [p], weight, impl=backend)
    assert torch.equal(torch.isnan(s), torch.isnan(ref[0]))
    assert torch.equal(torch.isinf(s), torch.isinf(ref[0]))
    assert torch.isnan(s).any() and torch.isinf(s).any()
    finite = torch.isfinite(ref[0])
    assert torch.allclose(s[finite], ref[0][finite], rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_opcheck(backend):
    from gankern.ops.ema import _ema_update_op

    shadow = random_like_sizes([7, 127], torch.float32, DEVICE, seed=7)
    params = random_like_sizes([7, 127], torch.float32, DEVICE, seed=8)
    torch.library.opcheck(_ema_update_op, (shadow, params, 0.1, None, backend))
    torch.library.opcheck(_ema_update_op, (shadow, params, 0.0, torch.tensor(0.1, device=DEVICE), backend))


def test_compiles_without_graph_break():
    shadow = random_like_sizes([7, 127], torch.float32, DEVICE, seed=9)
    params = random_like_sizes([7, 127], torch.float32, DEVICE, seed=10)
    ref64 = ema_update_float64(shadow, params, 0.2)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(s, p):
        gk.ops.ema_update_(s, p, 0.2, impl="reference")

    step(shadow, params)
    assert_close_to_reference(shadow, ref64, torch.float32)


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_eager_update_moves_version_counters(backend):
    # Outside torch.compile the op's body runs without the dispatcher; a graph that saved a
    # shadow tensor must still see it as modified, as the op's declared mutation would say.
    shadow = random_like_sizes([5, 9], torch.float32, DEVICE, seed=11)
    params = random_like_sizes([5, 9], torch.float32, DEVICE, seed=12)
    before = [s._version for s in shadow]
    gk.ops.ema_update_(shadow, params, 0.3, impl=backend)
    assert all(s._version > v for s, v in zip(shadow, before))


@pytest.mark.skipif("cpu" not in backends_for(IMPLEMENTED, torch.device("cpu")),
                    reason="native CPU kernels not built")
@pytest.mark.parametrize("isa", ["auto", "baseline"])
@pytest.mark.parametrize("weight", [0.0625, 0.71])
def test_cpu_kernel_both_isas(isa, weight, monkeypatch):
    # The C++ loop is compiled for the baseline ISA and for AVX2+FMA, picked at run time; both
    # must equal the reference, on both sides of the two-sided lerp, threaded and not.
    if isa == "baseline":
        monkeypatch.setenv("GANKERN_CPU_NO_AVX2", "1")
    sizes = [3, 1000, 300001]  # above kParallelMinElements: threaded over 64K chunks
    for shadow_dtype, param_dtype in PAIRS:
        shadow = random_like_sizes(sizes, shadow_dtype, torch.device("cpu"), seed=13)
        params = random_like_sizes(sizes, param_dtype, torch.device("cpu"), seed=14, scale=3.0)
        ref64 = ema_update_float64(shadow, params, weight)
        same_dtype = [s.clone() for s in shadow]
        gk.ops.ema_update_(same_dtype, params, weight, impl="reference")
        gk.ops.ema_update_(shadow, params, weight, impl="cpu")
        for i, (out, ref, same) in enumerate(zip(shadow, ref64, same_dtype)):
            assert_close_to_reference(out, ref, shadow_dtype, ref_same_dtype=same, name=f"shadow[{i}]")
