"""The advantage vocabulary: one record per mode, shared by ``group_advantages`` (torch) and
``PerPromptStatTracker`` (numpy).

For the rewards R of one group, its mean m and population standard deviation s (the caller
computes them: the group's for ``group_advantages``, the prompt's accumulated rewards for the
tracker), and the centred rewards c = R - m (exact zeros for a group with no spread):

    standard   A = scale * c / (s + 1e-4)                  (FlowGRPO's "grpo" at scale 1; AWM's configs
                                                           use 1/5 with the clip at 1: clip(A, -5, 5) / 5)
    exact      A = scale * c                               (the study's default: scale 0.1, no std)
    nft        p = clip(A_standard, -M, M) / M / 2 + 1/2   in [0, 1], M = adv_clip_max: DiffusionNFT's
               optimality probability
    rwr        A = R                                       (the raw rewards; tracker only, as in FlowGRPO)

The formulas use only arithmetic and ``.clip``, so the same functions run on numpy arrays and
torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from .._validation import check_choice

STD_EPS = 1e-4

# What advantages are; an objective that takes "real" advantages takes every kind.
ADVANTAGE_KINDS = {"real": "any real numbers", "probability": "optimality probabilities in [0, 1]"}


def _standard(rewards, centred, std, scale: float, adv_clip_max: float):
    return scale * centred / (std + STD_EPS)


def _exact(rewards, centred, std, scale: float, adv_clip_max: float):
    return scale * centred


def _nft(rewards, centred, std, scale: float, adv_clip_max: float):
    m = adv_clip_max
    return _standard(rewards, centred, std, 1.0, m).clip(-m, m) / m / 2 + 0.5


def _rwr(rewards, centred, std, scale: float, adv_clip_max: float):
    return rewards


@dataclass(frozen=True)
class AdvantageMode:
    """One advantage mode.

    name: the config / API name.
    formula: (rewards, centred, std, scale, adv_clip_max) -> advantages, elementwise (numpy or torch).
    uses_std: divides by the group's spread (a group of one has none).
    kind: one of ADVANTAGE_KINDS, what the values are ("probability": in [0, 1]).
    """

    name: str
    formula: Callable
    uses_std: bool
    kind: str = "real"

    def __post_init__(self):
        check_choice("kind", self.kind, ADVANTAGE_KINDS)


ADVANTAGE_MODE_RECORDS: Dict[str, AdvantageMode] = {
    mode.name: mode
    for mode in (
        AdvantageMode("standard", _standard, uses_std=True),
        AdvantageMode("exact", _exact, uses_std=False),
        AdvantageMode("nft", _nft, uses_std=True, kind="probability"),
        AdvantageMode("rwr", _rwr, uses_std=False),
    )
}
# The modes of group advantages (group_advantages, the trainer's advantage_mode).
ADVANTAGE_MODES: Tuple[str, ...] = ("standard", "exact", "nft")
# FlowGRPO's names for the same modes (its tracker's ``type``), accepted by the tracker.
FLOWGRPO_NAMES = {"grpo": "standard"}


def advantage_mode(name: str, allowed: Tuple[str, ...] = ADVANTAGE_MODES, argument: str = "mode") -> AdvantageMode:
    """The record of mode ``name`` among ``allowed``; ValueError naming ``argument`` otherwise."""
    check_choice(argument, name, allowed)
    return ADVANTAGE_MODE_RECORDS[name]
