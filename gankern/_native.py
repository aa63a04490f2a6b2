"""The only door to gankern._C: load it once, check every tensor, then hand over raw pointers.

csrc/ is torch-free, so a kernel there cannot check anything itself: whatever reaches it must
already be on the right device, of a supported dtype, dense, of matching sizes, and must not
alias what it writes. Every launcher wrapper below runs those checks first, so a bad tensor
gets a ValueError/TypeError, never a segfault or silent corruption. If the extension is
missing or fails to load, the first use warns once and the auto backend falls back.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from . import _cuda_compat
from ._checks import check_no_overlap, check_same_layout, check_tensor, common_device

# Must match csrc/include/gankern/common.h:DType.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

_C = None
_load_error: str | None = None
_loaded = False
_warned = False


def _load():
    global _C, _load_error, _loaded
    if not _loaded:
        _loaded = True
        try:
            from . import _C as module

            _C = module
        except Exception as e:  # ImportError, or an undefined symbol from a broken build
            _load_error = f"{type(e).__name__}: {e}"
    return _C


def load_error() -> str | None:
    _load()
    return _load_error


def available(kind: str, device: torch.device | None = None) -> bool:
    """Whether the native kernels of kind ("cpu" or "cuda") were built and can run here (for
    "cuda": on `device`, default the current one: this GPU and driver can load the kernels)."""
    global _warned
    C = _load()
    if C is None:
        if not _warned:
            _warned = True
            warnings.warn(f"gankern: native extension unavailable ({_load_error}); falling back to "
                          f"Triton/reference. Rebuild with `pip install --no-build-isolation -e .`",
                          RuntimeWarning, stacklevel=3)
        return False
    if kind == "cpu":
        return True
    if kind == "cuda":
        return bool(C.cuda_compiled) and torch.cuda.is_available() and _cuda_compat.runnable(C, device)
    if kind == "cuda_sim":
        return _load_cuda_sim() is not None
    return False


_SIM = None


def _load_cuda_sim():
    """gankern._cuda_sim._C: the CUDA kernels' source run on the host (test-only backend
    "cuda_sim", issue 15); None unless scripts/build_cuda_sim.py built it."""
    global _SIM
    if _SIM is None:
        try:
            from ._cuda_sim import _C as sim
        except ImportError:
            return None
        _SIM = sim
    return _SIM


def cuda_compiled() -> bool:
    C = _load()
    return bool(C is not None and C.cuda_compiled)


def _require(kind: str):
    if kind == "cuda_sim":
        if _load_cuda_sim() is None:
            raise RuntimeError("the CUDA host harness is not built: python scripts/build_cuda_sim.py")
        return _SIM
    if not available(kind):
        raise RuntimeError(f"gankern native {kind} kernels are not available: "
                           f"{_load_error or 'built without CUDA' if kind == 'cuda' else _load_error}")
    return _C


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _kind(device: torch.device, backend: str = "") -> str:
    """"cpu" or "cuda" by the device; "cuda_sim" (CPU tensors only) when the backend says so."""
    if backend == "cuda_sim":
        if device.type != "cpu":
            raise ValueError(f"impl='cuda_sim' runs the CUDA kernels on cpu tensors, got {device}")
        return "cuda_sim"
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"gankern native kernels run on cpu or cuda tensors, got {device}")
    return device.type


def _launch(name: str, device: torch.device, args: tuple, workspace=None, backend: str = "") -> None:
    """C.<name>_cpu(*args) on the CPU; on CUDA C.<name>_cuda(*args[, workspace], stream) on the
    current stream of `device`. workspace: a callable making the scratch tensor (allocated
    inside the device guard; the caching allocator keeps it stream-ordered after return).
    backend="cuda_sim": the same CUDA launcher from the host harness, on CPU tensors."""
    kind = _kind(device, backend)
    C = _require(kind)
    if kind == "cuda_sim":
        # Held until the launcher returns: the host has no stream-ordered allocator to keep a
        # freed workspace out of reuse while the kernels still run.
        ws = workspace() if workspace is not None else None
        getattr(C, f"{name}_cuda")(*args, *(() if ws is None else (ws.data_ptr(),)), 0)
        return
    if device.type == "cpu":
        getattr(C, f"{name}_cpu")(*args)
        return
    with torch.cuda.device(device):
        extra = (workspace().data_ptr(),) if workspace is not None else ()
        getattr(C, f"{name}_cuda")(*args, *extra, _stream(device))


# ----------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------
EMA_DTYPE_PAIRS = {(s, s) for s in DTYPE_CODES} | {(torch.float32, torch.float16),
                                                    (torch.float32, torch.bfloat16)}


def check_ema_args(shadow: Sequence[torch.Tensor], params: Sequence[torch.Tensor], weight,
                   check_overlap: bool = True):
    """Full validation of an ema_update_ call; returns the common device.

    check_overlap=False skips the aliasing check, which reads data pointers and so cannot run
    while torch.compile traces; the custom op then runs it on the real tensors instead.
    """
    if len(shadow) != len(params):
        raise ValueError(f"shadow and params must have the same length, got {len(shadow)} and {len(params)}")
    _check_ema_weight(weight, shadow)
    if not shadow:
        return torch.device("cpu")
    device = shadow[0].device
    # Fast path: one pass of cheap attribute reads (a GAN generator has hundreds of tensors and
    # this runs every step). Anything unusual falls through to the checks that explain it.
    ok = True
    for s, p in zip(shadow, params):
        if not (s.device == device and p.device == device and (s.dtype, p.dtype) in EMA_DTYPE_PAIRS
                and s.shape == p.shape and s.is_contiguous() and p.is_contiguous()):
            ok = False
            break
    if not ok:
        names = [f"shadow[{i}]" for i in range(len(shadow))] + [f"params[{i}]" for i in range(len(params))]
        common_device(list(shadow) + list(params), names)
        for i, (s, p) in enumerate(zip(shadow, params)):
            check_tensor(s, f"shadow[{i}]")
            check_tensor(p, f"params[{i}]")
            if (s.dtype, p.dtype) not in EMA_DTYPE_PAIRS:
                raise TypeError(f"shadow[{i}] is {s.dtype} and params[{i}] is {p.dtype}: supported are equal "
                                f"dtypes or a float32 shadow of float16/bfloat16 params")
            check_same_layout(s, p, f"shadow[{i}]", f"params[{i}]")
    if isinstance(weight, torch.Tensor) and weight.device != device:
        raise ValueError(f"weight is on {weight.device}, expected {device}")
    if check_overlap:
        check_no_overlap(shadow, params, "shadow", "params")
    return device


def _check_ema_weight(weight, shadow) -> None:
    if isinstance(weight, torch.Tensor):
        if weight.dim() != 0 or not weight.is_floating_point():
            raise ValueError(f"weight must be a float or a 0-d floating tensor, got {weight.dtype} of shape "
                             f"{tuple(weight.shape)}")
    elif isinstance(weight, bool) or not isinstance(weight, (float, int)):
        raise TypeError(f"weight must be a float or a 0-d tensor, got {type(weight).__name__}")
    elif not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")


class EmaPlan:
    """A validated ema_update_ over fixed tensor lists, for a caller that updates them every step.

    Validation and grouping happen once; each run re-reads only the data pointers and
    revalidates from scratch if any moved (model.to(), .half(), p.data = ...).

    run() is written for a cold cache: a training step evicts everything between two EMA steps,
    code included, and then each distinct Python function and C entry point costs microseconds
    (an SNGAN-32 G's update, 15 tensors: ~150 us of checks through the general launch path
    against a ~2 ms update). So the CPU launch is one bound call per dtype group, prepared here.
    """

    def __init__(self, shadow: Sequence[torch.Tensor], params: Sequence[torch.Tensor], backend: str = ""):
        self.shadow, self.params, self._backend = list(shadow), list(params), backend
        self._tensors = self.shadow + self.params
        self.device = check_ema_args(self.shadow, self.params, 0.0)
        self._build()

    def _build(self):
        self.ptrs = [t.data_ptr() for t in self._tensors]
        n = len(self.shadow)
        self.groups = _ema_groups(self.shadow, self.params, self.ptrs[:n], self.ptrs[n:])
        self._prepare_cpu_calls()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = value
        self._prepare_cpu_calls()

    def _prepare_cpu_calls(self) -> None:
        """(bound launcher, its leading arguments) per dtype group, for run()'s CPU fast path."""
        self._cpu_calls = None
        if self.groups and self._backend == "cpu" and self.device.type == "cpu":
            launch = _require("cpu").ema_update_cpu
            self._cpu_calls = [(launch, (sp, pp, numel, sd, pd)) for (sd, pd), (sp, pp, numel) in self.groups]

    def revalidate_if_moved(self) -> None:
        if [t.data_ptr() for t in self._tensors] != self.ptrs:
            self.device = check_ema_args(self.shadow, self.params, 0.0)
            self._build()

    def run(self, weight) -> None:
        """The native update (the cpu or cuda backend, by the tensors' device)."""
        self.revalidate_if_moved()
        calls = self._cpu_calls
        if calls is not None and type(weight) is float and 0.0 <= weight <= 1.0:
            for launch, args in calls:
                launch(*args, weight, 0)
            return
        _check_ema_weight(weight, self.shadow)
        _ema_launch(self.device, self.groups, weight, self.backend)


def _ema_groups(shadow, params, shadow_ptrs, param_ptrs) -> list:
    """[((shadow dtype code, param dtype code), (shadow ptrs, param ptrs, sizes)), ...]: one
    native call per group."""
    groups: dict = {}
    for s, p, sp, pp in zip(shadow, params, shadow_ptrs, param_ptrs):
        g = groups.setdefault((DTYPE_CODES[s.dtype], DTYPE_CODES[p.dtype]), ([], [], []))
        g[0].append(sp)
        g[1].append(pp)
        g[2].append(s.numel())
    return list(groups.items())


def _ema_launch(device: torch.device, groups, weight, backend: str = "") -> None:
    if not groups:
        return
    _require(_kind(device, backend))
    weight_value, weight_ptr = 0.0, 0
    if isinstance(weight, torch.Tensor):
        if weight.device != device:
            raise ValueError(f"weight is on {weight.device}, expected {device}")
        weight = weight.to(torch.float32)  # a device cast, no host sync; kept alive below
        weight_ptr = weight.data_ptr()
    else:
        weight_value = float(weight)
    for (sd, pd), (sp, pp, numel) in groups:
        _launch("ema_update", device, (sp, pp, numel, sd, pd, weight_value, weight_ptr), backend=backend)


def ema_update_(shadow: Sequence[torch.Tensor], params: Sequence[torch.Tensor], weight,
                backend: str = "") -> None:
    """shadow[i] = lerp(shadow[i], params[i], weight) with one native call per dtype pair."""
    device = check_ema_args(shadow, params, weight)
    groups = _ema_groups(shadow, params, [s.data_ptr() for s in shadow], [p.data_ptr() for p in params])
    _ema_launch(device, groups, weight, backend)


_EMA_PAIR_INFO = {pair: ((DTYPE_CODES[pair[0]], DTYPE_CODES[pair[1]]), pair[0].itemsize, pair[1].itemsize)
                  for pair in EMA_DTYPE_PAIRS}
# Memory layouts already swept free of overlap: {(shadow ptrs, param ptrs, numels, dtype pairs):
# None}. A layout fixes the exact byte ranges the kernel writes and reads, so a hit proves what
# the sweep would (the verdict depends on nothing else) and nothing can make a stale entry lie.
# Bounded: a caller alternating between a few lists (EMA + post-hoc profiles) keeps hitting.
_EMA_CLEAR_LAYOUTS: dict = {}
_EMA_CLEAR_LAYOUTS_MAX = 16


def ema_fast_groups(shadow: Sequence[torch.Tensor], params: Sequence[torch.Tensor], grad_enabled: bool):
    """(device, groups) for the everyday ema_update_ call, validated in one pass over the pairs;
    None when anything is unusual (then the caller runs the full checks, which name the fault).

    Accepts only what check_tensor_list + check_ema_args + the grad-mode rule accept: equal
    non-empty lengths, tensors on shadow[0]'s device, an EMA dtype pair, equal shapes, both
    contiguous, no shadow requiring grad in grad mode, no output overlapping anything. The
    separate checks read every tensor's attributes 3-4 times (about 10 us per pair; an SNGAN
    G's update is ~1.5 ms on one CPU thread and _foreach_lerp_ checks in C++); this reads each
    once, and reuses the overlap verdict of an identical layout. Cheapest reads first: after
    the memory-bound update itself every object here is out of cache, so each read is a miss.
    """
    n = len(shadow)
    if n == 0 or n != len(params):
        return None
    tensor = torch.Tensor
    first = shadow[0]
    if not isinstance(first, tensor):
        return None
    device = first.device
    on_cpu = device.type == "cpu"
    pair_info = _EMA_PAIR_INFO
    sps, pps, numels, infos = [], [], [], []
    info0 = None
    mixed = False
    for s, p in zip(shadow, params):
        if not (isinstance(s, tensor) and isinstance(p, tensor)):
            return None
        info = pair_info.get((s.dtype, p.dtype))
        if (info is None or not ((s.is_cpu and p.is_cpu) if on_cpu else (s.device == device and p.device == device))
                or s.shape != p.shape or not s.is_contiguous() or not p.is_contiguous()
                or (grad_enabled and s.requires_grad)):
            return None
        if info0 is None:
            info0 = info
        elif info is not info0:
            mixed = True
        sps.append(s.data_ptr())
        pps.append(p.data_ptr())
        numels.append(s.numel())
        infos.append(info)
    layout = (tuple(sps), tuple(pps), tuple(numels), tuple(infos) if mixed else info0)
    if layout not in _EMA_CLEAR_LAYOUTS:
        out_spans = [(a, a + k * i[1]) for a, k, i in zip(sps, numels, infos) if k]
        in_spans = [(a, a + k * i[2]) for a, k, i in zip(pps, numels, infos) if k]
        if _overlapping(out_spans, in_spans):
            return None  # check_no_overlap names the pair
        if len(_EMA_CLEAR_LAYOUTS) >= _EMA_CLEAR_LAYOUTS_MAX:
            _EMA_CLEAR_LAYOUTS.pop(next(iter(_EMA_CLEAR_LAYOUTS)))
        _EMA_CLEAR_LAYOUTS[layout] = None
    if not mixed:
        return device, [(info0[0], (sps, pps, numels))]
    groups: dict = {}
    for sp, pp, k, info in zip(sps, pps, numels, infos):
        g = groups.get(info[0])
        if g is None:
            g = groups[info[0]] = ([], [], [])
        g[0].append(sp)
        g[1].append(pp)
        g[2].append(k)
    return device, list(groups.items())


def _overlapping(out_spans: list, in_spans: list) -> bool:
    """Whether an output byte range meets another output or an input (the sweep of
    _checks.check_no_overlap, without the names)."""
    spans = sorted([(a, b, True) for a, b in out_spans] + [(a, b, False) for a, b in in_spans])
    out_end = in_end = 0
    for start, end, is_out in spans:
        if out_end > start or (is_out and in_end > start):
            return True
        if is_out:
            out_end = max(out_end, end)
        else:
            in_end = max(in_end, end)
    return False


# ----------------------------------------------------------------------------------------------
# EMA, K shadows of one parameter list (post-hoc EMA)
# ----------------------------------------------------------------------------------------------
MAX_EMA_SHADOWS = 8  # csrc/include/gankern/ema_multi.h:kMaxEmaShadows


def check_ema_multi_args(shadows: Sequence[Sequence[torch.Tensor]], params: Sequence[torch.Tensor],
                         weights, check_overlap: bool = True) -> torch.device:
    """Full validation of an ema_update_multi_ call: every shadows[k] is checked against params as
    ema_update_ checks its shadow, and no shadow may overlap another shadow or a param."""
    if not 1 <= len(shadows) <= MAX_EMA_SHADOWS:
        raise ValueError(f"shadows must hold 1 to {MAX_EMA_SHADOWS} lists, got {len(shadows)}")
    _check_ema_multi_weights(weights, len(shadows))
    device = None
    for k, shadow in enumerate(shadows):
        try:
            device = check_ema_args(shadow, params, 0.0, check_overlap=False)
        except (TypeError, ValueError) as e:  # name the list the bad tensor is in
            raise type(e)(str(e).replace("shadow[", f"shadows[{k}][").replace("shadow and", f"shadows[{k}] and")) from None
    for k in range(1, len(shadows)):
        for i, (a, b) in enumerate(zip(shadows[0], shadows[k])):
            if a.dtype != b.dtype:
                raise TypeError(f"shadows[{k}][{i}] is {b.dtype} but shadows[0][{i}] is {a.dtype}: the K "
                                f"shadows of one param share a dtype")
    if isinstance(weights, torch.Tensor) and weights.device != device:
        raise ValueError(f"weights is on {weights.device}, expected {device}")
    if check_overlap:
        flat = [s for shadow in shadows for s in shadow]
        try:
            check_no_overlap(flat, params, "shadow", "params")
        except ValueError as e:
            n = len(params)
            raise ValueError(_name_flat_shadows(str(e), n)) from None
    return device


def _name_flat_shadows(message: str, n: int) -> str:
    import re

    return re.sub(r"shadow\[(\d+)\]", lambda m: f"shadows[{int(m.group(1)) // n}][{int(m.group(1)) % n}]"
                  if n else m.group(0), message)


def _check_ema_multi_weights(weights, k: int) -> None:
    if isinstance(weights, torch.Tensor):
        if weights.dim() != 1 or weights.shape[0] != k or not weights.is_floating_point():
            raise ValueError(f"weights must be {k} floats or a floating tensor of shape ({k},), got "
                             f"{weights.dtype} of shape {tuple(weights.shape)}")
        return
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a sequence of {k} floats (one per shadow list), got "
                        f"{type(weights).__name__}")
    if len(weights) != k:
        raise ValueError(f"weights has {len(weights)} entries for {k} shadow lists")
    for j, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (float, int)):
            raise TypeError(f"weights[{j}] must be a float, got {type(w).__name__}")
        if not 0.0 <= float(w) <= 1.0:
            raise ValueError(f"weights[{j}] must be in [0, 1], got {w}")


class EmaMultiPlan:
    """A validated ema_update_multi_ over fixed tensor lists (PostHocEMA updates the same K
    shadow lists every step): checks and grouping once, then only the data pointers per call."""

    def __init__(self, shadows, params, backend: str = ""):
        self.backend = backend
        self.shadows = [list(s) for s in shadows]
        self.params = list(params)
        self.k = len(self.shadows)
        self.device = check_ema_multi_args(self.shadows, self.params, [0.0] * self.k)
        self._build()

    def _pointers(self):
        return [[s.data_ptr() for s in shadow] for shadow in self.shadows], [p.data_ptr() for p in self.params]

    def _build(self):
        self.ptrs = self._pointers()
        groups: dict = {}
        for i, p in enumerate(self.params):
            s0 = self.shadows[0][i]
            g = groups.setdefault((DTYPE_CODES[s0.dtype], DTYPE_CODES[p.dtype]), ([], [], []))
            g[0].append(i)
        out = []
        for key, (idx, _, _) in groups.items():
            sp = [self.ptrs[0][j][i] for j in range(self.k) for i in idx]
            pp = [self.ptrs[1][i] for i in idx]
            numel = [self.params[i].numel() for i in idx]
            out.append((key, (sp, pp, numel)))
        self.groups = out

    def revalidate_if_moved(self) -> None:
        if self._pointers() != self.ptrs:
            self.device = check_ema_multi_args(self.shadows, self.params, [0.0] * self.k)
            self._build()

    def run(self, weights) -> None:
        """The native update (cpu or cuda backend, by the tensors' device)."""
        self.revalidate_if_moved()
        _check_ema_multi_weights(weights, self.k)
        if not self.groups:
            return
        _require(_kind(self.device, self.backend))
        values, weight_ptr = [0.0] * self.k, 0
        if isinstance(weights, torch.Tensor):
            if weights.device != self.device:
                raise ValueError(f"weights is on {weights.device}, expected {self.device}")
            weights = weights.to(torch.float32).contiguous()  # a device cast, no host sync
            weight_ptr = weights.data_ptr()
        else:
            values = [float(w) for w in weights]
        for (sd, pd), (sp, pp, numel) in self.groups:
            _launch("ema_update_multi", self.device, (sp, pp, numel, self.k, sd, pd, values, weight_ptr),
                    backend=self.backend)


def ema_update_multi_(shadows, params, weights, backend: str = "") -> None:
    """shadows[k][i] = lerp(shadows[k][i], params[i], weights[k]), one native call per dtype pair."""
    EmaMultiPlan(shadows, params, backend).run(weights)


# ----------------------------------------------------------------------------------------------
# norm_penalty (gradient penalty)
# ----------------------------------------------------------------------------------------------
def _acc_of(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_rows(grads: torch.Tensor, name: str = "grads") -> tuple[int, int]:
    """grads as B dense rows of N elements: batch outermost, each sample one contiguous block."""
    from ._checks import is_dense

    check_tensor(grads, name, allow_empty=False, min_ndim=1)
    b = grads.shape[0]
    n = grads.numel() // b
    if not is_dense(grads) or (b > 1 and grads.stride(0) != n):
        raise ValueError(f"{name} must be dense with the batch dim outermost, got strides {grads.stride()}")
    return b, n


def _check_vec(t: torch.Tensor, name: str, shape: tuple, dtype: torch.dtype, device) -> None:
    check_tensor(t, name, dtypes=(dtype,), device=device)
    if tuple(t.shape) != shape or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous tensor of shape {shape}, got {tuple(t.shape)} "
                         f"with strides {t.stride()}")


def norm_penalty(grads: torch.Tensor, center: float, weight: float, backend: str = ""):
    b, n = _check_rows(grads)
    _require(_kind(grads.device, backend))
    acc = _acc_of(grads.dtype)
    norms = torch.empty(b, dtype=acc, device=grads.device)
    penalty = torch.empty((), dtype=acc, device=grads.device)
    args = (grads.data_ptr(), norms.data_ptr(), penalty.data_ptr(), b, n, DTYPE_CODES[grads.dtype],
            float(center), float(weight))
    _launch("norm_penalty", grads.device, args, workspace=lambda: _norm_penalty_workspace(grads, b, n),
            backend=backend)
    return penalty, norms


def _norm_penalty_workspace(grads: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """float64 partial sums of a small batch's row slices (empty when the CUDA forward does not slice)."""
    C = _C if grads.device.type == "cuda" else _load_cuda_sim()  # a CPU tensor: cuda_sim's
    return torch.empty(C.norm_penalty_workspace_elems(b, n), dtype=torch.float64, device=grads.device)


def norm_penalty_backward(grad_penalty: torch.Tensor, grad_norms: torch.Tensor, grads: torch.Tensor,
                          norms: torch.Tensor, center: float, weight: float, backend: str = "") -> torch.Tensor:
    b, n = _check_rows(grads)
    acc = _acc_of(grads.dtype)
    _check_vec(grad_penalty, "grad_penalty", (), acc, grads.device)
    _check_vec(grad_norms, "grad_norms", (b,), acc, grads.device)
    _check_vec(norms, "norms", (b,), acc, grads.device)
    _require(_kind(grads.device, backend))
    out = torch.empty_like(grads)  # same dense layout as grads, so rows line up
    args = (grad_penalty.data_ptr(), grad_norms.data_ptr(), grads.data_ptr(), norms.data_ptr(),
            out.data_ptr(), b, n, DTYPE_CODES[grads.dtype], float(center), float(weight))
    _launch("norm_penalty_backward", grads.device, args, backend=backend)
    return out


# ----------------------------------------------------------------------------------------------
# Spectral norm (sn)
# ----------------------------------------------------------------------------------------------
def sn_check(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int,
             grad: torch.Tensor | None = None, sigma: torch.Tensor | None = None) -> tuple[int, int, int]:
    """Checks of every sn launcher; returns (A, M, B) of the weight's 3-D view (see
    csrc/include/gankern/spectral_norm.h)."""
    check_tensor(weight, "weight", min_ndim=2, allow_empty=False)
    if not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous, got strides {weight.stride()}")
    if not isinstance(dim, int) or not 0 <= dim < weight.dim():
        raise ValueError(f"dim must be in [0, {weight.dim() - 1}], got {dim}")
    shape = tuple(weight.shape)
    a = 1
    for s in shape[:dim]:
        a *= s
    m = shape[dim]
    b = weight.numel() // (a * m)
    for t, name, n in ((u, "u", m), (v, "v", a * b)):
        check_tensor(t, name, dtypes=(weight.dtype,), device=weight.device, ndim=1)
        if t.numel() != n or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous vector of {n} elements for weight of shape "
                             f"{shape} and dim={dim}, got shape {tuple(t.shape)}")
    if grad is not None:
        check_tensor(grad, "grad", dtypes=(weight.dtype,), device=weight.device)
        if grad.shape != weight.shape or not grad.is_contiguous():
            raise ValueError(f"grad must be contiguous with shape {shape}, got {tuple(grad.shape)}")
    if sigma is not None:
        check_tensor(sigma, "sigma", dtypes=(weight.dtype,), device=weight.device, ndim=0)
    return a, m, b


def _sn_workspace(weight: torch.Tensor, a: int, m: int, b: int) -> torch.Tensor:
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    C = _C if weight.device.type == "cuda" else _load_cuda_sim()  # a CPU tensor: cuda_sim's
    return torch.empty(C.sn_workspace_elems(a, m, b), dtype=acc, device=weight.device)


def sn_power_iteration_(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int,
                        n_iter: int, eps: float, backend: str = ""):
    """u, v updated in place; returns (sigma, copy of u, copy of v)."""
    a, m, b = sn_check(weight, u, v, dim)
    check_no_overlap([u, v], [weight], "u/v", "weight")
    _require(_kind(weight.device, backend))
    sigma = torch.empty((), dtype=weight.dtype, device=weight.device)
    u_copy, v_copy = torch.empty_like(u), torch.empty_like(v)
    args = (DTYPE_CODES[weight.dtype], weight.data_ptr(), a, m, b, u.data_ptr(), v.data_ptr(),
            int(n_iter), float(eps), sigma.data_ptr(), u_copy.data_ptr(), v_copy.data_ptr())
    _launch("sn_power_iteration", weight.device, args, workspace=lambda: _sn_workspace(weight, a, m, b),
            backend=backend)
    return sigma, u_copy, v_copy


def sn_sigma(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int,
             backend: str = "") -> torch.Tensor:
    a, m, b = sn_check(weight, u, v, dim)
    _require(_kind(weight.device, backend))
    sigma = torch.empty((), dtype=weight.dtype, device=weight.device)
    args = (DTYPE_CODES[weight.dtype], weight.data_ptr(), a, m, b, u.data_ptr(), v.data_ptr(),
            sigma.data_ptr())
    _launch("sn_sigma", weight.device, args, workspace=lambda: _sn_workspace(weight, a, m, b),
            backend=backend)
    return sigma


def sn_scale(weight: torch.Tensor, sigma: torch.Tensor, backend: str = "") -> torch.Tensor:
    """weight / sigma."""
    check_tensor(weight, "weight")
    if not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous, got strides {weight.stride()}")
    check_tensor(sigma, "sigma", dtypes=(weight.dtype,), device=weight.device, ndim=0)
    _require(_kind(weight.device, backend))
    out = torch.empty_like(weight)
    args = (DTYPE_CODES[weight.dtype], weight.data_ptr(), weight.numel(), sigma.data_ptr(), out.data_ptr())
    _launch("sn_scale", weight.device, args, backend=backend)
    return out


def sn_normalize_backward(grad: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                          sigma: torch.Tensor | None, dim: int, backend: str = "") -> torch.Tensor:
    """grad/sigma - (<grad, weight>/sigma^2) u v^T; sigma None: u^T W v, computed here."""
    a, m, b = sn_check(weight, u, v, dim, grad=grad, sigma=sigma)
    _require(_kind(weight.device, backend))
    out = torch.empty_like(weight)
    args = (DTYPE_CODES[weight.dtype], grad.data_ptr(), weight.data_ptr(), a, m, b, u.data_ptr(),
            v.data_ptr(), 0 if sigma is None else sigma.data_ptr(), out.data_ptr())
    _launch("sn_normalize_backward", weight.device, args, workspace=lambda: _sn_workspace(weight, a, m, b),
            backend=backend)
    return out


def _sn_key(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple:
    # get_device() (-1 on the CPU, the ordinal on CUDA), not .device: an int instead of a new
    # torch.device object per tensor per call. The plans run on cpu and cuda devices only.
    return (weight.shape, weight.stride(), weight.dtype, weight.get_device(), weight.data_ptr(),
            u.shape, u.stride(), u.dtype, u.get_device(), u.data_ptr(),
            v.shape, v.stride(), v.dtype, v.get_device(), v.data_ptr())


class SnSpec(NamedTuple):
    """What a spectral-norm backward needs of the forward that ran under one SnPlan validation
    (the plan may be revalidated, e.g. by model.double(), before an older graph's backward).
    The weight's identity (shape, stride, dtype, data_ptr) is checked against the backward's;
    u, v and sigma sit in the forward's scratch tensor at byte offsets 0, v_at and sigma_at."""
    code: int               # gankern dtype code of the weight
    a: int                  # the weight as a matrix: a x (m * b) around `dim` (sn_check)
    m: int
    b: int
    shape: torch.Size
    stride: tuple
    dtype: torch.dtype
    ptr: int                # weight.data_ptr() at the forward
    cpu_backward: Optional[Callable]  # the bound CPU launcher; None on the other backends
    n_u: int
    n_v: int
    v_at: int               # byte offset of v's copy in scratch (64-byte aligned)
    sigma_at: int           # byte offset of sigma


class SnPlan:
    """A validated spectral norm of one layer, for the training step that runs it every call.

    sn_check and the overlap check (about 10 us on a small CPU, more than the kernels of a
    small layer) run once; each call re-reads the shapes, strides, dtypes and data pointers of
    weight, u and v and revalidates from scratch if any changed (model.to(), a new buffer, ...).
    On the CPU the launchers are bound once too: a small layer's whole step is overhead.
    """

    def __init__(self, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int,
                 backend: str = ""):
        self.dim, self.backend = dim, backend
        self._validate(weight, u, v)

    def _validate(self, weight, u, v) -> None:
        self.a, self.m, self.b = sn_check(weight, u, v, self.dim)
        check_no_overlap([u, v], [weight], "u/v", "weight")
        kind = _kind(weight.device, self.backend)
        C = _require(kind)
        self.code = DTYPE_CODES[weight.dtype]
        self.key = _sn_key(weight, u, v)
        self.cpu = kind == "cpu"
        # The copies of u and v and sigma that a backward needs live in ONE scratch tensor (one
        # allocation a forward instead of three: on a small layer each costs about as much as
        # its kernels), at 64-byte aligned offsets, as separate allocations would be.
        item = weight.element_size()
        self._v_at = -(-u.numel() * item // 64) * 64
        self._sigma_at = self._v_at + -(-v.numel() * item // 64) * 64
        self._scratch_numel = (self._sigma_at + 64) // item
        self._pi = self._scale = self._sigma = cpu_backward = None
        if self.cpu:
            self._pi, self._scale = C.sn_power_iteration_cpu, C.sn_scale_cpu
            self._sigma = C.sn_sigma_cpu
            cpu_backward = C.sn_normalize_backward_cpu
        # What a backward needs of the forward that ran under this validation: the plan may be
        # revalidated (model.double(), a new buffer) before an older graph runs its backward.
        self.spec = SnSpec(self.code, self.a, self.m, self.b, weight.shape, weight.stride(), weight.dtype,
                           weight.data_ptr(), cpu_backward, u.numel(), v.numel(), self._v_at, self._sigma_at)

    def train_forward(self, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iter: int,
                      eps: float):
        """n_iter power iterations on u, v in place, then W / sigma, in two launches.
        Returns (W / sigma, scratch, spec for backward); scratch holds the copies of u and v
        and sigma that the backward needs (unpack_scratch gives them as tensors)."""
        if _sn_key(weight, u, v) != self.key:
            self._validate(weight, u, v)
        a, m, b = self.a, self.m, self.b
        scratch = torch.empty(self._scratch_numel, dtype=weight.dtype, device=weight.device)
        out = torch.empty_like(weight)
        base = scratch.data_ptr()
        sigma_ptr = base + self._sigma_at
        pi_args = (self.code, weight.data_ptr(), a, m, b, u.data_ptr(), v.data_ptr(), int(n_iter),
                   float(eps), sigma_ptr, base, base + self._v_at)
        scale_args = (self.code, weight.data_ptr(), weight.numel(), sigma_ptr, out.data_ptr())
        if self.cpu:
            self._pi(*pi_args)
            self._scale(*scale_args)
        else:
            _launch("sn_power_iteration", weight.device, pi_args,
                    workspace=lambda: _sn_workspace(weight, a, m, b), backend=self.backend)
            _launch("sn_scale", weight.device, scale_args, backend=self.backend)
        return out, scratch, self.spec

    @staticmethod
    def unpack_scratch(scratch: torch.Tensor, spec: "SnSpec") -> tuple:
        """(u copy, v copy, sigma) of a train_forward's scratch, as views (for a double backward)."""
        item = scratch.element_size()
        v_at, sigma_at = spec.v_at // item, spec.sigma_at // item
        return (scratch[:spec.n_u], scratch[v_at:v_at + spec.n_v], scratch[sigma_at])

    def eval_forward(self, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """sigma = u^T W v from the stored u, v, then W / sigma, in two launches (no grad).
        Reads W, u and v on every call: the plan caches their layout, never their values."""
        if _sn_key(weight, u, v) != self.key:
            self._validate(weight, u, v)
        a, m, b = self.a, self.m, self.b
        sigma = torch.empty((), dtype=weight.dtype, device=weight.device)
        out = torch.empty_like(weight)
        sigma_args = (self.code, weight.data_ptr(), a, m, b, u.data_ptr(), v.data_ptr(), sigma.data_ptr())
        scale_args = (self.code, weight.data_ptr(), weight.numel(), sigma.data_ptr(), out.data_ptr())
        if self.cpu:
            self._sigma(*sigma_args)
            self._scale(*scale_args)
        else:
            _launch("sn_sigma", weight.device, sigma_args, workspace=lambda: _sn_workspace(weight, a, m, b),
                    backend=self.backend)
            _launch("sn_scale", weight.device, scale_args, backend=self.backend)
        return out

    def backward(self, grad: torch.Tensor, weight: torch.Tensor, scratch: torch.Tensor,
                 spec: "SnSpec") -> torch.Tensor:
        """grad/sigma - (<grad, weight>/sigma^2) u v^T for the tensors train_forward returned
        with `spec`. scratch (u, v and sigma) is train_forward's own; only the weight (a user's
        tensor, whose .data can be swapped by model.to()) is checked against the forward's."""
        code, a, m, b, shape, stride, dtype, ptr, cpu_backward, _, _, v_at, sigma_at = spec
        if (weight.data_ptr() != ptr or weight.dtype != dtype or weight.shape != shape
                or weight.stride() != stride):
            raise ValueError("weight changed shape, layout, dtype or storage between forward and "
                             "backward")
        if (grad.shape != weight.shape or grad.dtype != weight.dtype or grad.device != weight.device
                or not grad.is_contiguous()):
            check_tensor(grad, "grad", dtypes=(weight.dtype,), device=weight.device)
            raise ValueError(f"grad must be contiguous with shape {tuple(weight.shape)}, got shape "
                             f"{tuple(grad.shape)}, strides {grad.stride()}")
        out = torch.empty_like(weight)
        base = scratch.data_ptr()
        args = (code, grad.data_ptr(), ptr, a, m, b, base, base + v_at, base + sigma_at, out.data_ptr())
        if cpu_backward is not None:
            cpu_backward(*args)
        else:
            _launch("sn_normalize_backward", weight.device, args,
                    workspace=lambda: _sn_workspace(weight, a, m, b), backend=self.backend)
        return out


# ----------------------------------------------------------------------------------------------
# bias_act (gp)
# ----------------------------------------------------------------------------------------------
# Tensor types whose attribute reads are the plain tensor's: nn.Parameter disables
# __torch_function__, and a layer's bias reaches bias_act as one (DeferredBiasAct, BiasAct).
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _bias_act_args_ok(mode: int, x, b, dy, v, inner: int, channels: int) -> bool:
    """All checks of bias_act below in one pass of attribute reads: True means every one passes.
    Anything else (another subclass, a layout to explain) goes through the checks that name it."""
    if type(x) not in _PLAIN_TENSOR_TYPES:
        return False
    dtype, device = x.dtype, x.device
    if dtype not in DTYPE_CODES:
        return False
    if not x.is_contiguous():
        from ._checks import is_dense

        if not is_dense(x):
            return False
    shape, n = x.shape, x.numel()
    stride = x.stride() if n > 1 else None
    for t, needed in ((dy, mode >= 1), (v, mode == 2)):
        if needed and not (type(t) in _PLAIN_TENSOR_TYPES and t.dtype == dtype and t.device == device
                           and t.shape == shape and (stride is None or t.stride() == stride)):
            return False
    if b is not None:
        tile = channels * inner
        if not (type(b) in _PLAIN_TENSOR_TYPES and b.dtype == _acc_of(dtype) and b.device == device
                and b.shape == (channels,) and b.is_contiguous() and (n == 0 or (n % tile == 0 and tile <= n))):
            return False
    return True


def _check_bias_act_args(mode: int, x, b, dy, v, inner: int, channels: int) -> None:
    """The checks that name what is wrong (run when _bias_act_args_ok says something is)."""
    from ._checks import is_dense

    check_tensor(x, "x")
    if not is_dense(x):
        raise ValueError(f"x must be dense (contiguous or channels_last), got strides {x.stride()}")
    for t, name, needed in ((dy, "dy", mode >= 1), (v, "v", mode == 2)):
        if needed:
            if t is None:
                raise ValueError(f"{name} is required for mode {mode}")
            check_tensor(t, name, dtypes=(x.dtype,), device=x.device)
            if t.shape != x.shape or (x.numel() > 1 and t.stride() != x.stride()):
                raise ValueError(f"{name} must have x's shape {tuple(x.shape)} and strides {x.stride()}, "
                                 f"got {tuple(t.shape)} / {t.stride()}")
    if b is not None:
        _check_vec(b, "b", (channels,), _acc_of(x.dtype), x.device)
        if x.numel() and (x.numel() % (channels * inner) or channels * inner > x.numel()):
            raise ValueError(f"b of {channels} channels with inner stride {inner} does not tile x of "
                             f"shape {tuple(x.shape)}")


def bias_act(mode: int, act: int, x: torch.Tensor, b, dy, v, alpha: float, gain: float, clamp,
             inner: int, channels: int, backend: str = "") -> torch.Tensor:
    """mode 0: y; 1: dx from dy; 2: d(dx)/dx applied to v. Every tensor shares x's dense layout."""
    # The one-pass check is ~8 us a call cheaper than the explaining checks, which matters for
    # the small activations of a discriminator on the CPU.
    if not _bias_act_args_ok(mode, x, b, dy, v, inner, channels):
        _check_bias_act_args(mode, x, b, dy, v, inner, channels)
    kind = _kind(x.device, backend)
    _require(kind)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    args = (mode, act, x.data_ptr(), 0 if b is None else b.data_ptr(), 0 if dy is None else dy.data_ptr(),
            0 if v is None else v.data_ptr(), out.data_ptr(), x.numel(), channels, inner,
            DTYPE_CODES[x.dtype], float(alpha), float(gain), 0.0 if clamp is None else float(clamp),
            clamp is not None)
    if kind == "cpu":
        _C.bias_act_cpu(*args)
    else:
        _launch("bias_act", x.device, args, backend=backend)
    return out


def bias_act_grad_db_cpu(act: int, x: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, alpha: float,
                         gain: float, clamp, inner: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, db) of bias_act from one pass on the CPU: dx as bias_act(mode 1), and db = dx summed
    over every axis but the channel's, in b's dtype (the accumulation type of x)."""
    if b is None:
        raise ValueError("b is required for the bias gradient")
    if not _bias_act_args_ok(1, x, b, dy, None, inner, channels):
        _check_bias_act_args(1, x, b, dy, None, inner, channels)
    if x.device.type != "cpu":
        raise ValueError(f"bias_act_grad_db_cpu runs on CPU tensors, got {x.device}")
    _require("cpu")
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out, torch.zeros_like(b)
    db = torch.empty_like(b)
    _C.bias_act_grad_db_cpu(act, x.data_ptr(), b.data_ptr(), dy.data_ptr(), out.data_ptr(), db.data_ptr(),
                            x.numel(), channels, inner, DTYPE_CODES[x.dtype], float(alpha), float(gain),
                            0.0 if clamp is None else float(clamp), clamp is not None)
    return out, db
