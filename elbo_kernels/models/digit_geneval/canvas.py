"""Canvases: 8x8 digits from scikit-learn's bundled set, coloured, in a 2 x 2 grid of slots.

A canvas is float32 [3, 16, 16] in [0, 1] (RGB, black background); slot s = 2 * row + column
covers pixels [8 row : 8 row + 8, 8 column : 8 column + 8]. A digit in colour (r, g, b) is its
grey image times the colour. The flow model samples a small linear latent of the canvas
(:mod:`~elbo_kernels.models.digit_geneval.model`); the judges look at canvases.

Why this size: 16 x 16 is the smallest canvas of whole 8x8 digits with a left/right and an
above/below relation and room for four digits (counting to four).

:func:`render` draws a composition: where the prompt fixes no colour the digit gets a random
one; the slots are random except that a relation puts both digits in one row (left/right) or
one column (above/below).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..digits.data import judge_splits, load_images
from .prompts import COLOUR_NAMES, COLOURS, Composition, check_composition

SLOTS = 4
CANVAS_SHAPE = (3, 16, 16)
Placement = Tuple[int, int, str]
"""(slot, digit, colour name) of one drawn digit."""


def slot_of(row: int, column: int) -> int:
    return 2 * row + column


def relation_holds(relation: str, slot_a: int, slot_b: int) -> bool:
    """Whether the digit in slot_a is <relation> the digit in slot_b ("left of": a smaller column, ...)."""
    (row_a, col_a), (row_b, col_b) = divmod(slot_a, 2), divmod(slot_b, 2)
    return {"left of": col_a < col_b, "right of": col_a > col_b,
            "above": row_a < row_b, "below": row_a > row_b}[relation]


def layout(composition: Composition, rng: np.random.Generator) -> List[Placement]:
    """Where each required digit goes and in which colour (random where the prompt leaves it open)."""
    check_composition(composition)
    c = composition

    def colour(name: Optional[str]) -> str:
        return name if name is not None else COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]

    if c.relation is not None:
        line = int(rng.integers(2))
        first, second = {"left of": ((line, 0), (line, 1)), "right of": ((line, 1), (line, 0)),
                         "above": ((0, line), (1, line)), "below": ((1, line), (0, line))}[c.relation]
        slots = [slot_of(*first), slot_of(*second)]
        return [(s, d, colour(col)) for s, d, col in zip(slots, c.digits, c.colours)]
    digits = list(c.digits) * c.count
    colours = list(c.colours) * c.count
    slots = rng.choice(SLOTS, size=len(digits), replace=False)
    return [(int(s), d, colour(col)) for s, d, col in zip(slots, digits, colours)]


def draw(placements: Sequence[Placement], images: Sequence[np.ndarray]) -> np.ndarray:
    """Canvas float32 [3, 16, 16]: each placement's grey image [8, 8] times its colour, in its slot."""
    canvas = np.zeros(CANVAS_SHAPE, dtype=np.float32)
    for (slot, _, colour), image in zip(placements, images):
        row, column = divmod(slot, 2)
        rgb = np.asarray(COLOURS[colour], dtype=np.float32)[:, None, None]
        canvas[:, 8 * row:8 * row + 8, 8 * column:8 * column + 8] = rgb * image[None]
    return canvas


class DigitSource:
    """Random real digits of a given class, drawn from a subset of the 1,797 (all, or a judge split)."""

    def __init__(self, split: Optional[str] = None):
        images, labels = load_images()
        index = np.arange(len(images)) if split is None else judge_splits()[split]
        self.images = images
        self.index = index
        self.by_digit = {d: index[labels[index] == d] for d in range(10)}

    def draw(self, digit: int, rng: np.random.Generator) -> np.ndarray:
        pool = self.by_digit[digit]
        return self.images[pool[rng.integers(len(pool))]]


def render(composition: Composition, rng: np.random.Generator, source: Optional[DigitSource] = None):
    """(canvas float32 [3, 16, 16], placements) for one composition, digits from ``source`` (all digits)."""
    source = source or _all_digits()
    placements = layout(composition, rng)
    return draw(placements, [source.draw(d, rng) for _, d, _ in placements]), placements


_SOURCE: List[DigitSource] = []


def _all_digits() -> DigitSource:
    if not _SOURCE:
        _SOURCE.append(DigitSource())
    return _SOURCE[0]


def slots(canvases: torch.Tensor) -> torch.Tensor:
    """[N, 3, 16, 16] -> [N, 4, 3, 8, 8], slot-major (s = 2 row + column).

    Raises:
        ValueError: canvases not [N, 3, 16, 16].
    """
    if canvases.dim() != 4 or tuple(canvases.shape[1:]) != CANVAS_SHAPE:
        raise ValueError(f"images must be [N, 3, 16, 16], got shape {tuple(canvases.shape)}")
    n = canvases.shape[0]
    return canvases.reshape(n, 3, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(n, SLOTS, 3, 8, 8)
