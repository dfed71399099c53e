"""DigitGenEval prompts: GenEval's six categories written with digits, colours and a 2 x 2 layout.

A prompt is the canonical text of a :class:`Composition`; :func:`prompt` writes it and
:func:`parse_prompt` reads it back (exact round trip). The categories (GenEval's names):

    single_object   "a 7"                       a 7 anywhere on the canvas
    two_object      "a 3 and an 8"              both present (different digits)
    counting        "three 7s"                  exactly 2, 3 or 4 sevens
    colors          "a red 3"                   a 3 drawn in red
    position        "a 3 left of an 8"          left of / right of / above / below, by the slots' columns or rows
    color_attr      "a red 3 left of a blue 8"  position and both colours bound to the right digits

:func:`tokenize` turns a prompt into token ids for the learned prompt encoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}
COLOUR_NAMES = tuple(COLOURS)
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}

PAD, NULL = 0, 1
VOCABULARY = ("<pad>", "<null>", "a", "an", "and", "of", "left", "right", "above", "below", "s",
              "two", "three", "four", *COLOUR_NAMES, *[str(d) for d in range(10)])
TOKEN_IDS = {word: i for i, word in enumerate(VOCABULARY)}
MAX_TOKENS = 8
"""Token length L: the longest prompt, "a red 3 left of a blue 8", has 8 words."""


@dataclass(frozen=True)
class Composition:
    """What a prompt asks for.

    category: one of CATEGORIES. digits: the named digits (one, or two for two_object,
    position and color_attr). colours: one entry per digit, a colour name or None (any colour).
    count: how many of digits[0] (counting only; 1 otherwise). relation: for position and
    color_attr, digits[0] <relation> digits[1].
    """

    category: str
    digits: Tuple[int, ...]
    colours: Tuple[Optional[str], ...]
    count: int = 1
    relation: Optional[str] = None


def _article(word: str) -> str:
    return "an" if word == "8" else "a"


def _object(digit: int, colour: Optional[str]) -> str:
    words = ([colour] if colour else []) + [str(digit)]
    return f"{_article(words[0])} {' '.join(words)}"


def prompt(composition: Composition) -> str:
    """The canonical text of a composition, e.g. "a red 3 left of a blue 8".

    Raises:
        ValueError: the composition is not well formed for its category (see :func:`check_composition`).
    """
    check_composition(composition)
    c = composition
    if c.category == "counting":
        return f"{COUNT_WORDS[c.count]} {c.digits[0]}s"
    first = _object(c.digits[0], c.colours[0])
    if c.category in ("single_object", "colors"):
        return first
    second = _object(c.digits[1], c.colours[1])
    joiner = "and" if c.category == "two_object" else c.relation
    return f"{first} {joiner} {second}"


def check_composition(c: Composition) -> None:
    """Raise ValueError naming the field that does not fit the category."""
    if not isinstance(c, Composition):
        raise TypeError(f"composition must be a Composition, got {type(c).__name__}")
    if c.category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {c.category!r}")
    two = c.category in ("two_object", "position", "color_attr")
    if len(c.digits) != (2 if two else 1) or len(c.colours) != len(c.digits):
        raise ValueError(f"{c.category} needs {2 if two else 1} digit(s) and as many colours, got {c.digits}, {c.colours}")
    for d in c.digits:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= 9:
            raise ValueError(f"digits must be integers in 0..9, got {c.digits}")
    if two and c.digits[0] == c.digits[1]:
        raise ValueError(f"{c.category} needs two different digits, got {c.digits}")
    coloured = c.category in ("colors", "color_attr")
    if any((col is not None) != coloured for col in c.colours) or any(
            col is not None and col not in COLOURS for col in c.colours):
        raise ValueError(f"colours for {c.category} must be {'names from ' + str(COLOUR_NAMES) if coloured else 'None'}, "
                         f"got {c.colours}")
    if c.category == "color_attr" and c.colours[0] == c.colours[1]:
        raise ValueError(f"color_attr needs two different colours, got {c.colours}")
    if (c.count not in COUNT_WORDS) if c.category == "counting" else c.count != 1:
        raise ValueError(f"count must be 2, 3 or 4 for counting and 1 otherwise, got {c.count} for {c.category}")
    if (c.relation is not None) != (c.category in ("position", "color_attr")) or (
            c.relation is not None and c.relation not in RELATIONS):
        raise ValueError(f"relation must be one of {RELATIONS} for position/color_attr and None otherwise, "
                         f"got {c.relation!r} for {c.category}")


_OBJ = r"(an?) (?:(red|green|blue|yellow) )?(\d)"
_COUNTING = re.compile(r"(two|three|four) (\d)s")
_SINGLE = re.compile(_OBJ)
_PAIR = re.compile(_OBJ + r" (and|left of|right of|above|below) " + _OBJ)


def parse_prompt(text: str) -> Optional[Composition]:
    """The composition a canonical prompt names, or None for the empty (unconditional) prompt "".

    Raises:
        TypeError: text is not a str.
        ValueError: not a canonical DigitGenEval prompt (wrong article, unknown word, mixed categories).
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    if text.strip() == "":
        return None
    words = " ".join(text.split())
    match = _COUNTING.fullmatch(words)
    if match:
        count = {v: k for k, v in COUNT_WORDS.items()}[match.group(1)]
        result = Composition("counting", (int(match.group(2)),), (None,), count)
    elif _SINGLE.fullmatch(words):
        article, colour, digit = _SINGLE.fullmatch(words).groups()
        result = Composition("colors" if colour else "single_object", (int(digit),), (colour,))
    elif _PAIR.fullmatch(words):
        a1, c1, d1, joiner, a2, c2, d2 = _PAIR.fullmatch(words).groups()
        if (c1 is None) != (c2 is None) or (joiner == "and" and c1 is not None):
            raise ValueError(f"prompt {text!r}: colour both digits of a relation or neither (and none with 'and')")
        category = "two_object" if joiner == "and" else ("color_attr" if c1 else "position")
        result = Composition(category, (int(d1), int(d2)), (c1, c2), 1, None if joiner == "and" else joiner)
    else:
        raise ValueError(f"prompt must be a DigitGenEval prompt such as 'a 7', 'three 7s' or "
                         f"'a red 3 left of a blue 8', got {text!r}")
    try:
        canonical = prompt(result)
    except ValueError as error:
        raise ValueError(f"prompt {text!r}: {error}") from None
    if canonical != words:
        raise ValueError(f"prompt {text!r} is not canonical; write {canonical!r}")
    return result


def tokenize(prompts: Sequence[str]) -> torch.Tensor:
    """Token ids int64 [N, MAX_TOKENS], PAD-filled; "" is [NULL, PAD, ...] (the unconditional prompt).

    Raises:
        TypeError: a bare str. ValueError: a prompt that :func:`parse_prompt` rejects.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, got a single str (wrap it in a list)")
    rows: List[List[int]] = []
    for text in prompts:
        if parse_prompt(text) is None:
            ids = [NULL]
        else:
            words = re.sub(r"(\d)s$", r"\1 s", " ".join(text.split())).split()  # "three 7s" -> three, 7, s
            ids = [TOKEN_IDS[w] for w in words]
        rows.append(ids + [PAD] * (MAX_TOKENS - len(ids)))
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), MAX_TOKENS)


def random_composition(rng: np.random.Generator, category: Optional[str] = None) -> Composition:
    """A uniformly random composition (category uniform unless given; digits and colours distinct where needed)."""
    category = category or CATEGORIES[rng.integers(len(CATEGORIES))]
    if category == "counting":
        return Composition(category, (int(rng.integers(10)),), (None,), int(rng.integers(2, 5)))
    if category in ("single_object", "colors"):
        colour = COLOUR_NAMES[rng.integers(4)] if category == "colors" else None
        return Composition(category, (int(rng.integers(10)),), (colour,))
    digits = tuple(int(d) for d in rng.choice(10, size=2, replace=False))
    colours = tuple(COLOUR_NAMES[i] for i in rng.choice(4, size=2, replace=False)) if category == "color_attr" else (None, None)
    relation = RELATIONS[rng.integers(4)] if category in ("position", "color_attr") else None
    return Composition(category, digits, colours, 1, relation)
