"""bias_act benchmark: bias + LeakyReLU forward and backward on a discriminator activation
(the most common GAN layer tail), gankern's fused op vs what PyTorch users write
(x + b[:, None, None] then F.leaky_relu, or the bias inside the conv). Pure memory traffic:
the floor is reading x and writing y forward, reading dy and x and writing dx backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _backend
from ...ops.bias_act import IMPLEMENTED, bias_act
from ...testing import rel_error
from ..case import Case, Impl


def make_case(shape, device, channels_last, seed=0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape[1], generator=gen).to(device)
    dy = torch.randn(shape, generator=gen).to(device)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)

    def fwd_bwd(fn):
        def run():
            xr = x.detach().requires_grad_(True)
            br = b.detach().requires_grad_(True)
            y = fn(xr, br)
            dx, db = torch.autograd.grad(y, (xr, br), dy)
            return [y.detach(), dx, db]
        return run

    def torch_fn(xr, br):
        return F.leaky_relu(xr + br.view(1, -1, 1, 1), 0.2)

    ref = {}

    def error(out):
        if "r" not in ref:
            x64 = x.double().requires_grad_(True)
            b64 = b.double().requires_grad_(True)
            y = F.leaky_relu(x64 + b64.view(1, -1, 1, 1), 0.2)
            dx, db = torch.autograd.grad(y, (x64, b64), dy.double())
            ref["r"] = [y.detach(), dx, db]
        return rel_error(out, ref["r"])

    impls = [Impl("torch", run=fwd_bwd(torch_fn), is_baseline=True)]
    for backend in _backend.available(IMPLEMENTED, device):
        if backend == "reference" or (backend == "triton" and device.type == "cpu"):
            continue
        impls.append(Impl(f"gankern[{backend}]",
                          run=fwd_bwd(lambda xr, br, be=backend: bias_act(xr, br, "lrelu", 0.2, impl=be))))
    n = x.numel() * x.element_size()
    fmt = "channels_last" if channels_last else "NCHW"
    return Case(op="bias_act", name=f"bias+lrelu fwd+bwd {tuple(shape)} fp32 {fmt}", impls=impls, error=error,
                tolerance=1e-5, bytes_moved=5 * n, params={"shape": tuple(shape), "layout": fmt})


def cases(device: torch.device, quick: bool) -> list[Case]:
    shape = (8, 128, 16, 16) if quick else (64, 128, 32, 32)
    return [make_case(shape, device, False), make_case(shape, device, True)]
