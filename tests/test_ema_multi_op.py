"""gk.ops.ema_update_multi_ (K shadows of one param list in one pass) equals K separate
gk.ops.ema_update_ calls on every backend and dtype pair, bit for bit, and the float64 reference
within DESIGN.md tolerances; bad input is refused as ema_update_ refuses it, changing nothing."""

import os
import re

import pytest
import torch
from conftest import DEVICE, backends_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gankern as gk
from gankern.ops.ema.multi import IMPLEMENTED
from gankern.ops.ema.reference import ema_update_float64
from gankern.testing import assert_close_to_reference, random_like_sizes

PAIRS = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
         (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)]
ODD = [1, 7, 127, 4097]


def _lists(sizes, sd, pd, k, seed=0):
    params = random_like_sizes(sizes, pd, DEVICE, seed=seed, scale=3.0)
    shadows = [random_like_sizes(sizes, sd, DEVICE, seed=seed + 1 + j) for j in range(k)]
    return shadows, params


def _k_separate(shadows, params, weights, backend):
    out = [[s.clone() for s in shadow] for shadow in shadows]
    for j, shadow in enumerate(out):
        gk.ops.ema_update_(shadow, params, weights[j], impl=backend)
    return out


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
@pytest.mark.parametrize("sd,pd", PAIRS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("k", [1, 3])
def test_equals_k_separate_updates(backend, sd, pd, k):
    # 3 x 100,003 elements take the threaded path of the CPU kernel (2^18 elements and 2 chunks).
    threaded = backend == "cpu" and k == 3 and sd == torch.float32
    sizes = ODD + ([100_003] if threaded else [])
    shadows, params = _lists(sizes, sd, pd, k, seed=k)
    # 1.0 overwrites the whole list with params: an element the kernel skipped keeps its old value.
    weights = [0.0625, 0.71, 1.0][:k] if k > 1 else [1.0]
    expected = _k_separate(shadows, params, weights, backend)
    ref64 = [ema_update_float64(s, params, w) for s, w in zip(shadows, weights)]
    gk.ops.ema_update_multi_(shadows, params, weights, impl=backend)
    for j in range(k):
        for i, (out, exp) in enumerate(zip(shadows[j], expected[j])):
            assert out.dtype == sd
            assert torch.equal(out, exp), f"shadows[{j}][{i}] differs from a separate ema_update_"
            assert_close_to_reference(out, ref64[j][i], sd, ref_same_dtype=exp, name=f"shadows[{j}][{i}]")
        if weights[j] == 1.0:
            assert all(torch.equal(s, p.to(sd)) for s, p in zip(shadows[j], params))


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_device_tensor_weights(backend):
    shadows, params = _lists([7, 300], torch.float32, torch.float32, 2, seed=5)
    weights = [0.25, 0.875]
    expected = _k_separate(shadows, params, weights, backend)
    gk.ops.ema_update_multi_(shadows, params, torch.tensor(weights, device=DEVICE), impl=backend)
    assert all(torch.equal(a, b) for s, e in zip(shadows, expected) for a, b in zip(s, e))


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
def test_planned_update_equals_the_op_and_revalidates(backend):
    from gankern.ops.ema.multi import PlannedEmaMultiUpdate

    shadows, params = _lists([7, 33], torch.float32, torch.bfloat16, 2, seed=9)
    copy = [[s.clone() for s in shadow] for shadow in shadows]
    plan = PlannedEmaMultiUpdate(shadows, params, impl=backend)
    for step in range(3):
        plan([0.5, 0.125])
        gk.ops.ema_update_multi_(copy, params, [0.5, 0.125], impl=backend)
    assert all(torch.equal(a, b) for s, c in zip(shadows, copy) for a, b in zip(s, c))
    shadows[1][0].data = torch.zeros(7, dtype=torch.float32, device=DEVICE).t()  # a moved tensor
    plan([0.5, 0.5])
    assert torch.equal(shadows[1][0], 0.5 * params[0].float())


def _bad_cases():
    s = lambda n=3, dt=torch.float32: torch.randn(n, dtype=dt)  # noqa: E731
    base = torch.randn(10)
    return {
        "no lists": (lambda: ([], [s()], []), ValueError, "shadows is empty"),
        "nine lists": (lambda: ([[s()] for _ in range(9)], [s()], [0.1] * 9), ValueError, "1 to 8 lists"),
        "weights length": (lambda: ([[s()], [s()]], [s()], [0.1]), ValueError, "weights has 1 entries for 2"),
        "weight out of range": (lambda: ([[s()], [s()]], [s()], [0.1, 1.5]), ValueError, "weights[1]"),
        "weights not a list": (lambda: ([[s()]], [s()], 0.1), TypeError, "weights"),
        "shape in list 1": (lambda: ([[s()], [s(4)]], [s()], [0.1, 0.2]), ValueError, "shadows[1][0]"),
        "length of list 1": (lambda: ([[s()], [s(), s()]], [s()], [0.1, 0.2]), ValueError, "shadows[1] and params"),
        "dtype across lists": (lambda: ([[s()], [s(3, torch.float64)]], [s()], [0.1, 0.2]), TypeError, "shadows[1][0]"),
        "lists alias": (lambda: ([[base[:5]], [base[4:9]]], [s(5)], [0.1, 0.2]), ValueError, "overlaps"),
        "shadow aliases params": (lambda: ([[s(5)], [base[:5]]], [base[3:8]], [0.1, 0.2]), ValueError, "overlaps"),
        "empty": (lambda: ([[], []], [], [0.1, 0.2]), ValueError, "empty"),
        "grad leaf": (lambda: ([[s()], [torch.randn(3, requires_grad=True)]], [s()], [0.1, 0.2]), ValueError,
                      "shadows[1][0] requires grad"),
        "list of tensors": (lambda: ([s(), s()], [s()], [0.1, 0.2]), TypeError, "shadows[0]"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED, torch.device("cpu")))
@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_and_changes_nothing(backend, case):
    make, exc, needle = BAD[case]
    shadows, params, weights = make()
    before = [[t.detach().clone() for t in s] for s in shadows if isinstance(s, list)]
    with pytest.raises(exc, match=re.escape(needle)):
        gk.ops.ema_update_multi_(shadows, params, weights, impl=backend)
    for s, b in zip([s for s in shadows if isinstance(s, list)], before):
        assert all(torch.equal(x.detach(), y) for x, y in zip(s, b))


def test_opcheck_and_compile():
    from gankern.ops.ema.multi import _op

    shadows, params = _lists([7, 127], torch.float32, torch.float32, 2, seed=3)
    flat = [t for s in shadows for t in s]
    for backend in backends_for(IMPLEMENTED):
        torch.library.opcheck(_op, (flat, params, [0.1, 0.6], None, backend))
    ref64 = [ema_update_float64(s, params, w) for s, w in zip(shadows, (0.2, 0.9))]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(s, p):
        gk.ops.ema_update_multi_(s, p, [0.2, 0.9], impl="reference")

    step(shadows, params)
    for s, r in zip(shadows, ref64):
        assert_close_to_reference(s, r, torch.float32)


SPECIAL = [0.0, -0.0, 1e-30, -1e30, float("inf"), float("-inf"), float("nan")]


@st.composite
def multi_inputs(draw):
    sd, pd = draw(st.sampled_from(PAIRS))
    sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=5))
    k = draw(st.integers(1, 4))
    weights = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-7]), st.floats(0.0, 1.0)),
                            min_size=k, max_size=k))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1e-20, 1.0, 1e20]))
    special = draw(st.booleans())

    def make(n, dtype):
        t = torch.randn(n, generator=g, dtype=torch.float64) * scale
        if special and n:
            idx = torch.randint(0, n, (max(1, n // 10),), generator=g)
            t[idx] = torch.tensor(SPECIAL, dtype=torch.float64)[torch.randint(0, len(SPECIAL), idx.shape, generator=g)]
        return t.to(DEVICE, dtype)

    params = [make(n, pd) for n in sizes]
    shadows = [[make(n, sd) for n in sizes] for _ in range(k)]
    return shadows, params, weights


@pytest.mark.parametrize("backend", backends_for(IMPLEMENTED))
@settings(max_examples=int(os.environ.get("GANKERN_FUZZ_EXAMPLES", 25)), deadline=None,
          derandomize="GANKERN_FUZZ_EXAMPLES" not in os.environ, suppress_health_check=[HealthCheck.too_slow])
@given(data=multi_inputs())
def test_fuzzed_equality_with_k_separate_updates(backend, data):
    shadows, params, weights = data
    expected = _k_separate(shadows, params, weights, backend)
    gk.ops.ema_update_multi_(shadows, params, weights, impl=backend)
    for j, (s, e) in enumerate(zip(shadows, expected)):
        for i, (a, b) in enumerate(zip(s, e)):
            assert torch.equal(torch.isnan(a), torch.isnan(b)), (j, i)
            fin = ~torch.isnan(b)
            assert torch.equal(a[fin], b[fin]), (j, i)


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_posthoc_bench_case_computes_what_it_times(param_dtype):
    from gankern.bench.cases import ema as ema_cases

    case = ema_cases.make_posthoc_case(ema_cases.tiny_shapes(), param_dtype, DEVICE, "tiny")
    ran = [impl.label for impl in case.impls if impl.skip is None]
    assert any("ema_update_multi_" in label for label in ran) and any(i.is_baseline for i in case.impls)
    for impl in case.impls:
        if impl.skip is None:  # one step from the same start: each equals the float64 reference
            if impl.setup is not None:  # the rows share buffers; setup puts back the start
                impl.setup()
            assert case.error(impl.run()) <= case.tolerance, impl.label
