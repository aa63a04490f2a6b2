"""EMA benchmark: one weight-average step over a real generator's parameter list.

An EMA step is pure memory traffic (read shadow, read params, write shadow), spread over
many tensors of very different sizes, so the per-tensor launch and loop overhead of the usual
formulations is what a fused multi-tensor kernel removes. The parameter lists are shaped like
the generators people train: StyleGAN2 at 256x256 (~150 tensors, ~30M parameters) and the
SNGAN 32x32 generator (quick mode). Each case runs in fp32 and with bf16 parameters and an
fp32 shadow (mixed-precision training).

Compared, on identical inputs: every gankern backend usable on the device; torch._foreach_lerp_
(AveragedModel's multi-tensor path, timm ModelEmaV3; the baseline); the StyleGAN2-ADA loop
`p_ema.copy_(p.lerp(p_ema, beta))`; ema-pytorch when installed; torch.compile of the baseline.
"""

from __future__ import annotations

import torch

from ... import _backend
from ...ops.ema import IMPLEMENTED, ema_update_
from ...ops.ema.reference import ema_update_float64
from ...testing import rel_error
from ..case import Case, Impl

DECAY = 0.999
# The Triton interpreter runs kernels in Python: fine for a test-sized list, hopeless beyond.
INTERPRETED_TRITON_MAX_NUMEL = 1 << 16


def stylegan2_g_shapes(resolution: int = 256, w_dim: int = 512, channel_base: int = 16384,
                       channel_max: int = 512, mapping_layers: int = 8) -> list[tuple]:
    """Parameter shapes of a StyleGAN2 (config F style) generator: mapping MLP, then per
    resolution two modulated 3x3 convs (weight, bias, style affine, noise strength) and toRGB."""
    shapes = []
    for _ in range(mapping_layers):
        shapes += [(w_dim, w_dim), (w_dim,)]
    ch = {r: min(channel_base // r, channel_max) for r in (2 ** k for k in range(2, resolution.bit_length()))}
    prev = None
    for res, c in ch.items():
        convs = [(c, c)] if res == 4 else [(prev, c), (c, c)]
        if res == 4:
            shapes.append((c, 4, 4))  # learned constant input
        for cin, cout in convs:
            shapes += [(cin, w_dim), (cin,), (cout, cin, 3, 3), (cout,), ()]  # affine, conv, noise
        shapes += [(c, w_dim), (c,), (3, c, 1, 1), (3,)]  # toRGB: affine + 1x1 conv
        prev = c
    return shapes


def sngan_g_shapes(z_dim: int = 128, ch: int = 512) -> list[tuple]:
    """Parameter shapes of the SNGAN 'standard CNN' generator for 32x32 (Miyato et al. 2018)."""
    shapes = [(z_dim, 4 * 4 * ch), (4 * 4 * ch,), (ch,), (ch,)]
    c = ch
    for _ in range(3):  # 4 -> 8 -> 16 -> 32
        shapes += [(c, c // 2, 4, 4), (c // 2,), (c // 2,), (c // 2,)]  # deconv + BN affine
        c //= 2
    shapes += [(3, c, 3, 3), (3,)]
    return shapes


def tiny_shapes() -> list[tuple]:
    """A test-sized list with the awkward sizes (scalar, 1, 7, 127)."""
    return [(), (1,), (7,), (127,), (16, 9), (3, 5, 3, 3)]


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def make_case(shapes: list[tuple], param_dtype: torch.dtype, device: torch.device, model: str,
              with_compile: bool = True, seed: int = 0) -> Case:
    g = torch.Generator().manual_seed(seed)
    params = [(torch.randn(s, generator=g, dtype=torch.float64) * 0.05).to(device, param_dtype)
              for s in shapes]
    # A shadow near its model, as after a few thousand steps: differences are small but nonzero.
    shadow0 = [(p.double().cpu() + torch.randn(p.shape, generator=g, dtype=torch.float64) * 1e-3)
               .to(device, torch.float32) for p in params]
    weight = 1.0 - DECAY
    ref64 = {}

    def error(shadow):
        if "v" not in ref64:
            ref64["v"] = ema_update_float64([s.cpu() for s in shadow0], [p.cpu() for p in params], weight)
        return rel_error(shadow, ref64["v"])

    def fresh():
        return [s.clone() for s in shadow0]

    # Every row updates the same shadow buffers (reset to shadow0 before its check): identical
    # code on two copies of the shadow read 0.88x, the memory placement alone (see _reset).
    shared = fresh()
    reset = _reset(shared, shadow0)
    mixed = param_dtype != torch.float32
    impls = []
    total = sum(_numel(s) for s in shapes)
    for backend in _backend.available(IMPLEMENTED, device):
        if backend == "reference":
            continue  # it is torch._foreach_lerp_, the baseline row below
        label = f"gankern[{backend}]"
        if backend == "triton" and device.type == "cpu" and total > INTERPRETED_TRITON_MAX_NUMEL:
            impls.append(Impl(label, run=lambda: None,
                              skip="Triton on CPU is the interpreter (a test vehicle), not timed"))
            continue
        impls.append(Impl(label, run=lambda b=backend: (ema_update_(shared, params, weight, impl=b), shared)[1],
                          setup=reset))
    impls.append(Impl("gankern (auto)", run=lambda: (ema_update_(shared, params, weight), shared)[1], setup=reset))
    impls.append(_gk_ema_impl(shared, params, reset))

    def foreach(s, p):
        torch._foreach_lerp_(s, [x.float() for x in p] if mixed else p, weight)

    impls.append(Impl("torch._foreach_lerp_" + (" (params upcast)" if mixed else ""),
                      run=lambda: (foreach(shared, params), shared)[1], is_baseline=True, setup=reset))

    beta = DECAY

    def stylegan2_loop(s_list):
        for p_ema, p in zip(s_list, params):
            p_ema.copy_((p.float() if mixed else p).lerp(p_ema, beta))
        return s_list

    impls.append(Impl("StyleGAN2-ADA loop", run=lambda: stylegan2_loop(shared), setup=reset))
    impls.append(_ema_pytorch_impl(shared, params, mixed, reset))

    if with_compile:
        compiled = torch.compile(foreach, dynamic=False)

        def compile_then_reset():
            compiled(fresh(), params)  # compile on scratch copies
            reset()

        impls.append(Impl("torch.compile(_foreach_lerp_)", run=lambda: (compiled(shared, params), shared)[1],
                          setup=compile_then_reset))
    else:
        impls.append(Impl("torch.compile(_foreach_lerp_)", run=lambda: None,
                          skip="--quick on CPU: compiling takes 15-60 s here; run the full bench"))

    itemsize = torch.empty((), dtype=param_dtype).element_size()
    bytes_moved = total * (4 + 4 + itemsize)  # read shadow, write shadow, read params
    label = "fp32" if not mixed else f"{str(param_dtype).replace('torch.', '')} params, fp32 shadow"
    return Case(op="ema", name=f"{model} G, {label}", impls=impls, error=error, tolerance=1e-5,
                bytes_moved=bytes_moved, flops=3 * total,
                params={"model": model, "tensors": len(shapes), "numel": total,
                        "param_dtype": str(param_dtype), "shadow_dtype": "torch.float32", "decay": DECAY})


def _reset(shared: list, source: list):
    """setup of a row that updates the shared shadow buffers: back to the starting shadow, so
    its check starts where the float64 reference does. The rows share buffers because an EMA
    step is pure memory traffic and where its arrays sit in memory moves it by more than the
    differences measured (torch._foreach_lerp_ on a second copy of the shadow read 0.88x of
    itself on the first)."""
    def reset():
        with torch.no_grad():
            for dst, src in zip(shared, source):
                dst.copy_(src)
    return reset


def _adopt(module_params, shared: list) -> None:
    """Point a library's own shadow parameters at the shared buffers (same dtypes and shapes)."""
    for p, s in zip(module_params, shared):
        if p.dtype != s.dtype or p.shape != s.shape:
            raise ValueError(f"shadow {tuple(p.shape)} {p.dtype} cannot adopt {tuple(s.shape)} {s.dtype}")
        p.data = s


def _frozen(params: list[torch.Tensor]) -> torch.nn.ParameterList:
    """params as the frozen parameters of a module, the form EMA libraries take a model in."""
    return torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False) for p in params])


def _ema_pytorch_class(name: str, label: str, mixed: bool, kept: str):
    """(ema_pytorch.<name>, None), or (None, a skipped row saying why it cannot run)."""
    try:
        import ema_pytorch
    except ImportError:
        return None, Impl(label, run=lambda: None, skip="ema_pytorch not installed")
    if mixed:
        return None, Impl(label, run=lambda: None, skip=f"ema-pytorch keeps {kept} in the param dtype")
    return getattr(ema_pytorch, name), None


def _gk_ema_impl(shared: list[torch.Tensor], params: list[torch.Tensor], reset) -> Impl:
    """gk.EMA(model).update(): the module API a trainer calls, over a model holding params
    (its planned update, checks paid once, plus the per-step decay and buffer bookkeeping)."""
    from ...nn.ema import EMA

    model = torch.nn.Module()
    model.weights = _frozen(params)
    ema = EMA(model, decay=DECAY, impl="auto")
    _adopt(ema.module.parameters(), shared)

    def run():
        ema.update()
        return shared  # its parameters are these buffers (_adopt); listing them is not the update

    return Impl("gk.EMA.update", run=run, setup=reset)


def _ema_pytorch_impl(shared: list[torch.Tensor], params: list[torch.Tensor], mixed: bool, reset) -> Impl:
    """ema-pytorch (lucidrains) when installed: its EMA.update() over the same tensors, with
    its warm-up schedule pinned to the fixed decay so the result is comparable."""
    label = "ema-pytorch"
    EmaPytorch, skipped = _ema_pytorch_class("EMA", label, mixed, "the shadow")
    if skipped:
        return skipped
    ema = EmaPytorch(_frozen(params), beta=DECAY, update_after_step=0, update_every=1)
    ema.get_current_decay = lambda: DECAY  # the library's warm-up would change the decay per step
    _adopt(ema.ema_model.parameters(), shared)
    ema.step.fill_(1)  # past its first call, which copies instead of averaging
    if hasattr(ema, "initted"):
        ema.initted.fill_(True)

    def run():
        ema.update()
        return shared  # as in gk.EMA's row: its shadow parameters are these buffers

    return Impl(label, run=run, setup=reset)


POSTHOC_SIGMA_RELS = (0.05, 0.10)  # EDM2's two tracked profiles: K = 2
POSTHOC_STEP = 1000  # the power-EMA weights of update 1000: 1 - (1 - 1/t)^(gamma + 1)


def _ema_pytorch_posthoc_impl(shared: list, params: list[torch.Tensor], mixed: bool, reset) -> Impl:
    """ema-pytorch's PostHocEMA when installed: K KarrasEMA profiles over the same tensors, each
    placed at update POSTHOC_STEP so its decay is the one the fused row uses (its step counter
    then advances per timed call, as in training); snapshots are left to 'manual'."""
    label = "ema-pytorch PostHocEMA"
    PostHocEmaPytorch, skipped = _ema_pytorch_class("PostHocEMA", label, mixed, "the profiles")
    if skipped:
        return skipped
    import tempfile

    folder = tempfile.mkdtemp(prefix="gankern-bench-posthoc-")  # it creates it even when manual
    ema = PostHocEmaPytorch(_frozen(params), sigma_rels=POSTHOC_SIGMA_RELS, update_every=1,
                            checkpoint_every_num_steps="manual", checkpoint_folder=folder)
    for profile, shadow in zip(ema.ema_models, shared):
        _adopt(profile.ema_model.parameters(), shadow)
        profile.initted.fill_(True)

    def setup():
        reset()
        for profile in ema.ema_models:
            # Its update increments step, then decays by (1 - 1/(step + 1))^(gamma + 1).
            profile.step.fill_(POSTHOC_STEP - 2)

    def run():
        ema.update()
        return shared  # the profiles' parameters are these buffers (_adopt)

    return Impl(label, run=run, setup=setup)


def make_posthoc_case(shapes: list[tuple], param_dtype: torch.dtype, device: torch.device, model: str,
                      seed: int = 0) -> Case:
    """Post-hoc EMA: K shadows of one parameter list per step, fused (params read once) against
    K separate updates. The _foreach_lerp_ baseline upcasts bf16 params once per step and
    reuses them for the K lerps (its most favourable form)."""
    from ...nn.power_ema import power_beta, sigma_rel_to_gamma
    from ...ops.ema import PlannedEmaUpdate
    from ...ops.ema.multi import IMPLEMENTED as MULTI_IMPLEMENTED
    from ...ops.ema.multi import PlannedEmaMultiUpdate

    k = len(POSTHOC_SIGMA_RELS)
    weights = [1.0 - power_beta(POSTHOC_STEP, sigma_rel_to_gamma(s)) for s in POSTHOC_SIGMA_RELS]
    g = torch.Generator().manual_seed(seed)
    params = [(torch.randn(s, generator=g, dtype=torch.float64) * 0.05).to(device, param_dtype) for s in shapes]
    shadows0 = [[(p.double().cpu() + torch.randn(p.shape, generator=g, dtype=torch.float64) * 1e-3)
                 .to(device, torch.float32) for p in params] for _ in range(k)]
    ref64 = {}

    def error(out):
        if "v" not in ref64:
            cpu_params = [p.cpu() for p in params]
            ref64["v"] = [t for s, w in zip(shadows0, weights)
                          for t in ema_update_float64([x.cpu() for x in s], cpu_params, w)]
        return rel_error([t for s in out for t in s], ref64["v"])

    # One set of K shadow lists for every row, reset before each check (see make_case).
    shared = [[t.clone() for t in s] for s in shadows0]
    reset = _reset([t for s in shared for t in s], [t for s in shadows0 for t in s])
    mixed = param_dtype != torch.float32
    total = sum(_numel(s) for s in shapes)
    impls = []
    for backend in _backend.available(MULTI_IMPLEMENTED, device):
        if backend == "reference":
            continue  # K _foreach_lerp_ calls: the baseline row below
        label = f"gankern[{backend}] ema_update_multi_"
        if backend == "triton" and device.type == "cpu" and total > INTERPRETED_TRITON_MAX_NUMEL:
            impls.append(Impl(label, run=lambda: None,
                              skip="Triton on CPU is the interpreter (a test vehicle), not timed"))
            continue
        fused = PlannedEmaMultiUpdate(shared, params, backend)
        impls.append(Impl(label, run=lambda f=fused: (f(weights), shared)[1], setup=reset))
        singles = [PlannedEmaUpdate(s, params, backend) for s in shared]
        impls.append(Impl(f"gankern[{backend}] {k} x ema_update_",
                          run=lambda u=singles: ([f(w) for f, w in zip(u, weights)], shared)[1], setup=reset))

    def foreach():
        ends = [x.float() for x in params] if mixed else params
        for s, w in zip(shared, weights):
            torch._foreach_lerp_(s, ends, w)
        return shared

    impls.append(Impl(f"{k} x torch._foreach_lerp_" + (" (params upcast once)" if mixed else ""),
                      run=foreach, is_baseline=True, setup=reset))
    impls.append(_ema_pytorch_posthoc_impl(shared, params, mixed, reset))
    itemsize = torch.empty((), dtype=param_dtype).element_size()
    label = "fp32" if not mixed else f"{str(param_dtype).replace('torch.', '')} params, fp32 shadows"
    return Case(op="ema", name=f"post-hoc EMA K={k}, {model} G, {label}", impls=impls, error=error,
                tolerance=1e-5, bytes_moved=total * (itemsize + 2 * 4 * k), flops=3 * k * total,
                params={"model": model, "tensors": len(shapes), "numel": total, "K": k,
                        "sigma_rels": list(POSTHOC_SIGMA_RELS), "weights": weights,
                        "param_dtype": str(param_dtype), "shadow_dtype": "torch.float32"})


def cases(device: torch.device, quick: bool) -> list[Case]:
    compile_ok = not (quick and device.type == "cpu")
    if quick:
        shapes, model = sngan_g_shapes(), "SNGAN-32"
    else:
        shapes, model = stylegan2_g_shapes(256), "StyleGAN2-256"
    # Post-hoc EMA at the size the issue sets (~30M params): StyleGAN2-1024 config F's G.
    posthoc_shapes, posthoc_model = ((sngan_g_shapes(), "SNGAN-32") if quick else
                                     (stylegan2_g_shapes(1024, channel_base=32768), "StyleGAN2-1024"))
    dtypes = (torch.float32, torch.bfloat16)
    return ([make_case(shapes, dtype, device, model, with_compile=compile_ok, seed=i) for i, dtype in enumerate(dtypes)]
            + [make_posthoc_case(posthoc_shapes, dtype, device, posthoc_model, seed=i) for i, dtype in enumerate(dtypes)])
