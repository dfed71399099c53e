"""The policy objectives of the design-space study, as a table of small per-draw functions.

Each function maps a :class:`Draws` (per-draw scalars, [N] each) to the per-draw
loss [N]; the batch loss is its mean. Notation (docs/design.md section 2):

    e_theta   ELBO under the current policy (carries the gradient)
    e_old     ELBO under the old / behaviour policy (no gradient)
    l         stopgrad(e_theta) - e_old, the log-ratio;  rho = exp(l)
    A         advantages

    epg            -rho A e_theta
    epg_noratio    -A e_theta
    pepg           -rho (A - l) e_theta                      (the study's recommendation)
    pepg_noratio   -(A - l) e_theta
    par            0.5 rho (A - (e_theta - e_old))^2
    par_noratio    0.5 (A - (e_theta - e_old))^2
    grpo           max(-A' q, -A' clip(q, 1 - c, 1 + c)),  q = exp(e_theta - e_old),  A' = clip(A, -M, M)
    nft            M (p L+ + (1 - p) L-) / g   (DiffusionNFT; p = A is the optimality probability,
                   L+- = -e of the blended velocities v+- = g v + (1 - g) v_old, (1 + g) v_old - g v)
    awm            A' w(t) mean(r^2) = -A' e_theta   (advantage-weighted matching, A' = clip(A, -M, M))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch


@dataclass
class Draws:
    e_theta: torch.Tensor
    e_old: torch.Tensor
    advantages: torch.Tensor
    clip_range: float
    adv_clip_max: float
    nft_beta: float
    nft_positive: Optional[torch.Tensor] = None  # L+ (nft only)
    nft_negative: Optional[torch.Tensor] = None  # L- (nft only)

    @property
    def log_ratio(self) -> torch.Tensor:
        return self.e_theta.detach() - self.e_old

    @property
    def ratio(self) -> torch.Tensor:
        return torch.exp(self.log_ratio)


def epg(d: Draws) -> torch.Tensor:
    return -d.ratio * d.advantages * d.e_theta


def epg_noratio(d: Draws) -> torch.Tensor:
    return -d.advantages * d.e_theta


def pepg(d: Draws) -> torch.Tensor:
    return -d.ratio * (d.advantages - d.log_ratio) * d.e_theta


def pepg_noratio(d: Draws) -> torch.Tensor:
    return -(d.advantages - d.log_ratio) * d.e_theta


def par(d: Draws) -> torch.Tensor:
    return 0.5 * d.ratio * (d.advantages - (d.e_theta - d.e_old)).square()


def par_noratio(d: Draws) -> torch.Tensor:
    return 0.5 * (d.advantages - (d.e_theta - d.e_old)).square()


def grpo(d: Draws) -> torch.Tensor:
    a = d.advantages.clamp(-d.adv_clip_max, d.adv_clip_max)
    q = torch.exp(d.e_theta - d.e_old)
    clipped = q.clamp(1 - d.clip_range, 1 + d.clip_range)
    return torch.maximum(-a * q, -a * clipped)


def nft(d: Draws) -> torch.Tensor:
    p = d.advantages
    return d.adv_clip_max * (p * d.nft_positive + (1 - p) * d.nft_negative) / d.nft_beta


def awm(d: Draws) -> torch.Tensor:
    return -d.advantages.clamp(-d.adv_clip_max, d.adv_clip_max) * d.e_theta


OBJECTIVES: Dict[str, Callable[[Draws], torch.Tensor]] = {
    "epg": epg,
    "epg_noratio": epg_noratio,
    "pepg": pepg,
    "pepg_noratio": pepg_noratio,
    "par": par,
    "par_noratio": par_noratio,
    "grpo": grpo,
    "nft": nft,
    "awm": awm,
}
