"""Capture the Triton specializations gankern's launchers really produce, for AOT compilation.

Why: a Triton kernel is compiled per specialization (argument dtypes, constexpr flags, which
pointers and ints are 16-divisible), and the set is whatever the launchers pass. Listing it by
hand would drift from the code; instead this runs representative calls of every op through its
public entry point with impl="triton" under TRITON_INTERPRET=1, intercepts every kernel launch,
and asks Triton's own binder (for a CUDA target) which specialization that launch would compile.
scripts/aot_compile.py then compiles each one for real GPU targets.

Run by aot_compile.py in a child process (TRITON_INTERPRET must be set before triton imports);
alone: TRITON_INTERPRET=1 python scripts/aot_capture.py OUT.json [--thorough]
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import make_backend  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

_BACKEND = make_backend(GPUTarget("cuda", 90, 32))
_TAG: list[str] = []


def discover_kernels():
    """Every @triton.jit function named *_kernel in gankern.ops' modules: {(module, name): fn}."""
    import gankern.ops as ops

    found = {}
    for info in pkgutil.walk_packages(ops.__path__, "gankern.ops."):
        try:
            mod = importlib.import_module(info.name)
        except ImportError:
            continue
        for name, obj in vars(mod).items():
            if isinstance(obj, InterpretedFunction) and name.endswith("_kernel") and obj.fn.__module__ == mod.__name__:
                found[(mod.__name__, name)] = obj
    return found


def _encode(value):
    if isinstance(value, tl.dtype):
        return {"dtype": str(value)}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"constexpr of type {type(value).__name__} cannot be recorded")


def _record(module, name, jit_fn, binder, args, kwargs, specs):
    options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    call_kwargs = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
    bound_args, specialization, opts = binder(*args, **call_kwargs)
    _, signature, constexprs, attrs = jit_fn._pack_args(_BACKEND, dict(call_kwargs, **options), bound_args,
                                                        specialization, opts)
    spec = {
        "module": module, "kernel": name, "signature": signature,
        "constexprs": [[list(path), _encode(v)] for path, v in sorted(constexprs.items())],
        "attrs": [[list(path), v] for path, v in sorted(attrs.items())],
        "options": {"num_warps": options.get("num_warps", 4), "num_stages": options.get("num_stages", 3)},
    }
    key = json.dumps(spec, sort_keys=True)
    entry = specs.setdefault(key, dict(spec, tags=[], launches=0))
    entry["launches"] += 1
    for tag in _TAG:
        if tag not in entry["tags"]:
            entry["tags"].append(tag)


def install_hooks(kernels, specs):
    """Wrap each kernel's run() so that every launch records its specialization, then runs."""
    for (module, name), kernel in kernels.items():
        # The kernel's own do_not_specialize lists, or the binder specializes what the GPU launch would not.
        jit_fn = JITFunction(kernel.fn, **{k: v for k, v in kernel.kwargs.items()
                                           if k in ("do_not_specialize", "do_not_specialize_on_alignment")})
        binder = create_function_from_signature(jit_fn.signature, jit_fn.params, _BACKEND)
        original = kernel.run

        def run(*args, grid, warmup, _m=module, _n=name, _j=jit_fn, _b=binder, _o=original, **kwargs):
            _record(_m, _n, _j, _b, args, kwargs, specs)
            return _o(*args, grid=grid, warmup=warmup, **kwargs)

        kernel.run = run


@contextlib.contextmanager
def tagged(tag):
    """Launches inside are a named hot path the tests check (e.g. 'ema fp32')."""
    _TAG.append(tag)
    try:
        yield
    finally:
        _TAG.pop()


DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def drive_bias_act(thorough):
    from gankern.ops.bias_act import bias_act
    from gankern.ops.bias_act.reference import ACTS

    g = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        for act in ACTS:
            # Every activation on a 16-divisible size (the aligned fast path); the flag
            # combinations and an odd size on two of them, or on all with thorough=True.
            variants = [(True, None, (2, 16, 4, 4))]
            if thorough or act in ("lrelu", "tanh"):
                variants += [(False, 0.5, (2, 16, 4, 4)), (True, 0.5, (1, 3, 5, 7)), (True, None, (1, 3, 5, 7)),
                             (True, None, (4, 16))]  # a Linear layer: inner = 1
            for with_bias, clamp, shape in variants:
                hot = act == "lrelu" and with_bias and clamp is None and shape[1] == 16
                x = torch.randn(shape, generator=g).to(dtype).requires_grad_()
                b = torch.randn(shape[1], generator=g).to(dtype).requires_grad_() if with_bias else None
                with tagged(f"bias_act {_SHORT[dtype]}") if hot else contextlib.nullcontext():
                    y = bias_act(x, b, act=act, clamp=clamp, impl="triton")
                    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
                    dx.sum().backward()


def drive_ema(thorough):
    from gankern.ops.ema import ema_update_

    pairs = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
             (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.float64, torch.float64)]
    sizes = (4096 * 2, 64 * 3 * 3 * 3, 7)  # full blocks, a conv weight, a tail-only tensor
    for sd, pd in pairs:
        shadow = [torch.randn(n).to(sd) for n in sizes]
        params = [torch.randn(n).to(pd) for n in sizes]
        name = f"ema {_SHORT[sd]}" + ("" if sd == pd else f"<-{_SHORT[pd]}")
        with tagged(name):
            ema_update_(shadow, params, 0.001, impl="triton")
        ema_update_(shadow, params, torch.tensor(0.001, dtype=sd if sd == torch.float64 else torch.float32),
                    impl="triton")
        # Views at an element offset: not 16-byte aligned, the scalar-access variant.
        ema_update_([torch.randn(4097).to(sd)[1:]], [torch.randn(4097).to(pd)[1:]], 0.001, impl="triton")


def drive_ema_multi(thorough):
    try:
        from gankern.ops.ema.multi import ema_update_multi_
    except ImportError:  # the op is not in this tree: its kernel is not either
        return
    for sd, pd in ((torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                   (torch.float64, torch.float64)):
        sizes = (4096 * 2, 7)
        params = [torch.randn(n).to(pd) for n in sizes]
        shadows = [[torch.randn(n).to(sd) for n in sizes] for _ in range(2)]
        name = f"ema_multi {_SHORT[sd]}" + ("" if sd == pd else f"<-{_SHORT[pd]}")
        with tagged(name):
            ema_update_multi_(shadows, params, [0.001, 0.01], impl="triton")
        acc = torch.float64 if sd == torch.float64 else torch.float32
        ema_update_multi_(shadows, params, torch.tensor([0.001, 0.01], dtype=acc), impl="triton")
        # Views at an element offset: not 16-byte aligned, the scalar-access variant.
        ema_update_multi_([[torch.randn(4097).to(sd)[1:]] for _ in range(2)], [torch.randn(4097).to(pd)[1:]],
                          [0.5, 0.25], impl="triton")


def drive_norm_penalty(thorough):
    from gankern.ops.norm_penalty import norm_penalty

    for dtype in DTYPES:
        for shape in ((4, 3, 16, 16), (3, 5, 7), (2, 3, 128, 128)):  # the last: rows split over programs
            g = torch.randn(shape).to(dtype).requires_grad_()
            with tagged(f"norm_penalty {_SHORT[dtype]}") if shape[0] == 4 else contextlib.nullcontext():
                pen, norms = norm_penalty(g, 1.0, 10.0, impl="triton")
                (dg,) = torch.autograd.grad(pen + norms.sum(), g, create_graph=True)
                dg.sum().backward()


def drive_spectral_norm(thorough):
    from gankern.ops import spectral_norm as sn

    for dtype in DTYPES:
        for shape, dim in (((64, 32, 3, 3), 0), ((32, 64, 4, 4), 1), ((10, 7), 0)):
            w = torch.randn(shape).to(dtype)
            m = shape[dim]
            u = torch.nn.functional.normalize(torch.randn(m), dim=0).to(dtype)
            v = torch.nn.functional.normalize(torch.randn(w.numel() // m), dim=0).to(dtype)
            with tagged(f"spectral_norm {_SHORT[dtype]}") if shape[0] == 64 else contextlib.nullcontext():
                s, u2, v2 = sn.power_iteration_(w, u, v, dim, 1, 1e-12, "triton")
                sn.sigma(w, u2, v2, dim, "triton")
                for sig in (s, None):
                    wr = w.clone().requires_grad_()
                    sn.normalize(wr, u2, v2, sig, dim, "triton").backward(torch.randn_like(w))


DRIVERS = (drive_bias_act, drive_ema, drive_ema_multi, drive_norm_penalty, drive_spectral_norm)


def capture(thorough=False):
    kernels = discover_kernels()
    specs: dict = {}
    install_hooks(kernels, specs)
    for drive in DRIVERS:
        drive(thorough)
    captured = {(s["module"], s["kernel"]) for s in specs.values()}
    missing = sorted(f"{m}.{n}" for (m, n) in kernels if (m, n) not in captured)
    return {"kernels": sorted(f"{m}.{n}" for (m, n) in kernels), "not_captured": missing,
            "specs": list(specs.values())}


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("aot_capture: TRITON_INTERPRET=1 must be set before triton is imported")
    result = capture(thorough="--thorough" in sys.argv[2:])
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=1)
    print(f"aot_capture: {len(result['specs'])} specializations of {len(result['kernels'])} kernels"
          + (f"; NOT captured: {result['not_captured']}" if result["not_captured"] else ""))
