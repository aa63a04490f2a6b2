"""The GAN losses by name, as (D loss, G loss) pairs on D's raw scores (logits).

One table instead of a trainer with a branch per loss, so each formula sits in one place and the
tests can check it against its paper. Every function takes D's scores on a real batch and a fake
batch of the same size; the relativistic losses pair them, and GAN-QP also needs the inputs
themselves (its penalty divides by the distance between the paired real and fake sample).

  saturating  Goodfellow et al. 2014, minimax:   D: -log s(r) - log(1 - s(f))   G: log(1 - s(f))
  ns          the same D, G: -log s(f) (the non-saturating heuristic of the same paper)
  wgan        Arjovsky et al. 2017:               D: f - r                      G: -f
  hinge       Lim & Ye 2017 / Miyato et al. 2018: D: relu(1 - r) + relu(1 + f)  G: -f
  lsgan       Mao et al. 2017 (a=0, b=c=1):       D: (r - 1)^2/2 + f^2/2         G: (f - 1)^2/2
  rsgan       Jolicoeur-Martineau 2018:           D: -log s(r - f)               G: -log s(f - r)
  ragan       the same paper, averaged (RaSGAN):  D: -log s(r - E f) - log(1 - s(f - E r))
                                                  G: -log s(f - E r) - log(1 - s(r - E f))
  gan-qp      Su 2018:                            D: -(r - f) + (r - f)^2 / (2 lambda d(x_r, x_f))
                                                  G: r - f
              d = mean |x_r - x_f| over the non-batch dims (the paper's reference code), lambda = 10

with s the logistic sigmoid and every term averaged over the batch. log s(x) = -softplus(-x)
keeps the losses finite for any logit.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

LOSSES = ("saturating", "ns", "wgan", "hinge", "lsgan", "rsgan", "ragan", "gan-qp")


def check_loss(name) -> str:
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {name!r}")
    return name


def _flat(scores: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of D scores, got {type(scores).__name__}")
    if scores.dim() == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.dim() != 1:
        raise ValueError(f"{name} must hold one D score per sample, shape (B,) or (B, 1); "
                         f"got {tuple(scores.shape)}")
    return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores


def qp_distance(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """GAN-QP's d(x_r, x_f): mean absolute difference per sample pair."""
    if real is None or fake is None:
        raise ValueError("loss 'gan-qp' needs the real and fake inputs, not only D's scores")
    if real.shape != fake.shape:
        raise ValueError(f"gan-qp pairs real and fake samples: shapes {tuple(real.shape)} and "
                         f"{tuple(fake.shape)} differ")
    d = (real.detach() - fake.detach()).abs().reshape(real.shape[0], -1).mean(1)
    return d.float() if d.dtype in (torch.float16, torch.bfloat16) else d


def d_loss(loss: str, real_scores: torch.Tensor, fake_scores: torch.Tensor,
           real: Optional[torch.Tensor] = None, fake: Optional[torch.Tensor] = None,
           qp_lambda: float = 10.0) -> torch.Tensor:
    """The discriminator's loss (to minimize) for `loss`; a scalar."""
    check_loss(loss)
    r = _flat(real_scores, "real_scores")
    f = _flat(fake_scores, "fake_scores")
    if loss in ("rsgan", "gan-qp") and r.shape != f.shape:
        raise ValueError(f"loss {loss!r} pairs real and fake scores; got {r.numel()} and {f.numel()}")
    if loss in ("saturating", "ns"):
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if loss == "wgan":
        return f.mean() - r.mean()
    if loss == "hinge":
        return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
    if loss == "lsgan":
        return 0.5 * (r - 1.0).pow(2).mean() + 0.5 * f.pow(2).mean()
    if loss == "rsgan":
        return F.softplus(-(r - f)).mean()
    if loss == "ragan":
        return F.softplus(-(r - f.mean())).mean() + F.softplus(f - r.mean()).mean()
    # gan-qp
    if not qp_lambda > 0:
        raise ValueError(f"qp_lambda must be > 0, got {qp_lambda!r}")
    diff = r - f
    # The floor keeps identical pairs (d = 0) from dividing by zero; it never binds otherwise.
    dist = qp_distance(real, fake).clamp_min(1e-8)
    return (-diff + diff.pow(2) / (2.0 * qp_lambda * dist)).mean()


def g_loss(loss: str, real_scores: Optional[torch.Tensor], fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's loss (to minimize) for `loss`; real_scores only matter to the
    relativistic losses and GAN-QP (pass them detached: they carry no gradient to G)."""
    check_loss(loss)
    f = _flat(fake_scores, "fake_scores")
    if loss in ("rsgan", "ragan", "gan-qp"):
        if real_scores is None:
            raise ValueError(f"loss {loss!r} needs D's scores on a real batch for the G step")
        r = _flat(real_scores, "real_scores")
    if loss == "saturating":
        return -F.softplus(f).mean()
    if loss == "ns":
        return F.softplus(-f).mean()
    if loss in ("wgan", "hinge"):
        return -f.mean()
    if loss == "lsgan":
        return 0.5 * (f - 1.0).pow(2).mean()
    if loss == "rsgan":
        return F.softplus(-(f - r)).mean()
    if loss == "ragan":
        return F.softplus(-(f - r.mean())).mean() + F.softplus(r - f.mean()).mean()
    return (r - f).mean()  # gan-qp


def needs_real_scores_for_g(loss: str) -> bool:
    return loss in ("rsgan", "ragan", "gan-qp")
