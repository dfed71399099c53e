"""A per-prompt reward tracker with FlowGRPO's ``PerPromptStatTracker`` semantics.

Rewards are accumulated per prompt string across ``update`` calls until
``clear()`` (FlowGRPO clears once per epoch); each update returns advantages of
the rewards just given, from the prompt's accumulated statistics (mean_prompt, std_prompt;
the std of all given rewards with global_std) and the formulas of advantages/modes.py
(the same as ``group_advantages``):

    standard (FlowGRPO's "grpo")   A = scale * (R - mean_prompt) / (std_prompt + 1e-4)   (scale 1 by default)
    exact                          A = scale * (R - mean_prompt)
    nft                            p = clip(A_standard, -M, M) / M / 2 + 1/2
    rwr                            A = R

Prompts whose accumulated rewards are all equal get A = 0 and are counted in
``zero_std_ratio`` (the fraction of prompts of the last update with no spread).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .modes import ADVANTAGE_MODE_RECORDS, FLOWGRPO_NAMES, advantage_mode

# The tracker's modes: all of advantages/modes.py, and FlowGRPO's names for them.
TRACKER_TYPES = tuple(ADVANTAGE_MODE_RECORDS) + tuple(FLOWGRPO_NAMES)


class PerPromptStatTracker:
    """Per-prompt reward statistics; ``update(prompts, rewards, type="grpo") -> advantages``."""

    def __init__(self, global_std: bool = False, scale: float = 1.0, adv_clip_max: float = 5.0):
        self.global_std = global_std
        self.scale = scale
        self.adv_clip_max = adv_clip_max
        self.stats: Dict[str, List[float]] = {}
        self.history_prompts: set = set()
        self.zero_std_ratio: float = 0.0

    def update(self, prompts: Sequence[str], rewards, type: str = "grpo") -> np.ndarray:  # noqa: A002
        """Advantages (float64 array, one per reward) for this batch.

        type: a mode of advantages/modes.py: "standard" (or FlowGRPO's name "grpo") standardised,
        "exact" scale * (R - mean) (the study), "nft" the standardised advantage mapped to an
        optimality probability clip(A, -M, M) / M / 2 + 1/2 (DiffusionNFT), "rwr" the raw rewards.
        Raises ValueError for mismatched lengths, non-finite rewards or an unknown type.
        """
        mode = advantage_mode(FLOWGRPO_NAMES.get(type, type), TRACKER_TYPES, argument="type")
        prompts = np.asarray(list(prompts), dtype=object)
        rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
        if prompts.shape[0] != rewards.shape[0]:
            raise ValueError(f"prompts ({prompts.shape[0]}) and rewards ({rewards.shape[0]}) must have the same length")
        if not np.isfinite(rewards).all():
            raise ValueError(f"rewards contains {int((~np.isfinite(rewards)).sum())} non-finite value(s)")
        unique = list(dict.fromkeys(prompts.tolist()))
        for prompt in unique:
            self.stats.setdefault(prompt, []).extend(rewards[prompts == prompt].tolist())
            self.history_prompts.add(prompt)
        advantages = np.zeros_like(rewards)
        zero_spread = 0
        for prompt in unique:
            mask = prompts == prompt
            history = np.asarray(self.stats[prompt])
            values = rewards[mask]
            centred = values - history.mean()
            if history.max() == history.min():
                zero_spread += 1
                centred = np.zeros_like(centred)
            std = (rewards.std() if self.global_std else history.std()) if mode.uses_std else None
            advantages[mask] = mode.formula(values, centred, std, self.scale, self.adv_clip_max)
        self.zero_std_ratio = zero_spread / len(unique)
        return advantages

    def get_stats(self) -> Tuple[float, int]:
        """(average number of rewards per tracked prompt, number of prompts ever seen)."""
        sizes = [len(v) for v in self.stats.values()]
        return (sum(sizes) / len(sizes) if sizes else 0.0), len(self.history_prompts)

    def clear(self) -> None:
        self.stats = {}

    def state_dict(self) -> dict:
        return {
            "global_std": self.global_std,
            "scale": self.scale,
            "adv_clip_max": self.adv_clip_max,
            "stats": {k: list(v) for k, v in self.stats.items()},
            "history_prompts": sorted(self.history_prompts),
            "zero_std_ratio": self.zero_std_ratio,
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_std = state["global_std"]
        self.scale = state["scale"]
        self.adv_clip_max = state.get("adv_clip_max", 5.0)
        self.stats = {k: list(v) for k, v in state["stats"].items()}
        self.history_prompts = set(state["history_prompts"])
        self.zero_std_ratio = state["zero_std_ratio"]
