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

Each objective is an :class:`Objective` record: its per-draw function and what it needs
(the old policy, the blended velocities, which advantages, which likelihood estimators).
The loss, ``TrainConfig.validate()`` and the trainer ask the record; adding a row to
``OBJECTIVES`` is all it takes to add an objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .._validation import check_choice
from ..advantages.modes import ADVANTAGE_KINDS
from ..estimators import ESTIMATORS


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


@dataclass(frozen=True)
class Objective:
    """One objective of the table and what it needs.

    name: the config / API name.
    per_draw: Draws -> per-draw loss [N]; calling the record calls it.
    needs_old_policy: reads e_old (v_old may be None only when False).
    advantage_kind: one of ADVANTAGE_KINDS (advantages/modes.py): "real" takes any advantages,
        "probability" only a mode whose values are in [0, 1] (DiffusionNFT's p).
    blend: needs the ELBOs of the blended velocities v+- (nft_positive / nft_negative), so it
        needs velocities and cannot run on a log-probability estimate alone.
    estimators: the likelihood estimators (ESTIMATORS) it is defined on.
    """

    name: str
    per_draw: Callable[[Draws], torch.Tensor]
    needs_old_policy: bool = True
    advantage_kind: str = "real"
    blend: bool = False
    estimators: Tuple[str, ...] = ESTIMATORS

    def __post_init__(self):
        check_choice("advantage_kind", self.advantage_kind, ADVANTAGE_KINDS)
        for estimator in self.estimators:
            check_choice("estimators", estimator, ESTIMATORS)

    def __call__(self, draws: Draws) -> torch.Tensor:
        return self.per_draw(draws)

    def takes(self, advantage_kind: str) -> bool:
        """Whether advantages of ``advantage_kind`` (an advantage mode's kind) suit this objective."""
        return self.advantage_kind in ("real", advantage_kind)


OBJECTIVES: Dict[str, Objective] = {
    record.name: record
    for record in (
        Objective("epg", epg),
        Objective("epg_noratio", epg_noratio, needs_old_policy=False),
        Objective("pepg", pepg),
        Objective("pepg_noratio", pepg_noratio),
        Objective("par", par),
        Objective("par_noratio", par_noratio),
        Objective("grpo", grpo),
        Objective("nft", nft, advantage_kind="probability", blend=True, estimators=("elbo",)),
        Objective("awm", awm, needs_old_policy=False, estimators=("elbo",)),
    )
}
"""Name -> :class:`Objective`; ``OBJECTIVES[name](draws)`` is the per-draw loss."""


def objective_record(objective: Union[str, Objective]) -> Objective:
    """The record of ``objective`` (a name, or a record resolved earlier, returned as it is).

    Raises ValueError naming 'objective' and the choices for an unknown name.
    """
    if isinstance(objective, Objective):
        return objective
    check_choice("objective", objective, tuple(OBJECTIVES))
    return OBJECTIVES[objective]
