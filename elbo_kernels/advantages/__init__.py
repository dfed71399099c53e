"""Advantages from per-prompt group statistics of the rewards (docs/design.md section 5)."""

from .group import group_advantages
from .modes import ADVANTAGE_KINDS, ADVANTAGE_MODE_RECORDS, ADVANTAGE_MODES, AdvantageMode, advantage_mode
from .tracker import PerPromptStatTracker

__all__ = ["ADVANTAGE_KINDS", "ADVANTAGE_MODE_RECORDS", "ADVANTAGE_MODES", "AdvantageMode", "advantage_mode",
           "group_advantages", "PerPromptStatTracker"]
