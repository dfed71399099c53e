"""Advantages from per-prompt group statistics of the rewards (docs/design.md section 5)."""

from .group import ADVANTAGE_MODES, group_advantages
from .tracker import PerPromptStatTracker

__all__ = ["ADVANTAGE_MODES", "group_advantages", "PerPromptStatTracker"]
