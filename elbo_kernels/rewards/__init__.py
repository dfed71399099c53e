"""Reward functions with FlowGRPO's interface: ``reward_fn(images, prompts, metadata) -> (scores, info)``.

``scores`` is a dict of per-image arrays; "avg" is the one the trainer optimises.
"""

from __future__ import annotations

from typing import Callable, Dict

RewardFn = Callable


def _digit():
    from ..models.digits import reward_fn

    return reward_fn


REWARDS: Dict[str, Callable[[], RewardFn]] = {"digit": _digit}


def get_reward(name: str) -> RewardFn:
    """The reward function registered under ``name``; ValueError lists the known names."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(map(repr, REWARDS))}")
    return REWARDS[name]()
