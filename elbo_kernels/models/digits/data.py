"""The digits data: scikit-learn's bundled 8x8 handwritten digits, prompts, and the fixed splits.

Images are ``load_digits().images / 16``: float32 [N, 8, 8] in [0, 1], in the
dataset's own orientation. Latents are ``2 * pixel - 1`` with a channel axis,
[N, 1, 8, 8] in [-1, 1].

Judge splits (seed ``SPLIT_SEED``, fixed so the shipped accuracies can be
re-measured): one random permutation of the 1,797 images; the first
``NUM_HELD_OUT`` are held out from both judges, the next half of the rest
trains the reward judge and the remaining half trains the evaluation judge.
The flow model is pretrained on all images.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, Optional, Sequence

import numpy as np
import torch

PROMPT_TEMPLATE = "a handwritten {}"
NUM_CLASSES = 10
SPLIT_SEED = 0
NUM_HELD_OUT = 360

_DIGIT = re.compile(r"\d")


def prompt(digit: int) -> str:
    """The prompt naming one digit, e.g. prompt(7) == "a handwritten 7"."""
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an integer in 0..9, got {digit!r}")
    return PROMPT_TEMPLATE.format(int(digit))


def parse_prompt(text: str) -> Optional[int]:
    """The digit a prompt names, or None for the empty (unconditional) prompt "".

    Any prompt containing exactly one decimal digit names that digit, so
    "a handwritten 7" and "7" both give 7.

    Raises:
        TypeError: text is not a str.
        ValueError: a non-empty prompt without exactly one digit.
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    if text.strip() == "":
        return None
    found = _DIGIT.findall(text)
    if len(found) != 1:
        raise ValueError(f"prompt must name exactly one digit 0-9 (e.g. {prompt(7)!r}), got {text!r}")
    return int(found[0])


@lru_cache(maxsize=1)
def _load() -> tuple:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_images() -> tuple:
    """(images float32 [1797, 8, 8] in [0, 1], labels int64 [1797]), read-only arrays."""
    return _load()


def to_latents(images: torch.Tensor) -> torch.Tensor:
    """Pixels [N, 8, 8] or [N, 1, 8, 8] in [0, 1] -> latents [N, 1, 8, 8] in [-1, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images * 2 - 1


def judge_splits() -> Dict[str, np.ndarray]:
    """Index arrays "held_out", "reward_train", "eval_train" (disjoint; see module docstring)."""
    images, _ = _load()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    rest = order[NUM_HELD_OUT:]
    half = len(rest) // 2
    return {"held_out": order[:NUM_HELD_OUT], "reward_train": rest[:half], "eval_train": rest[half:]}


def per_class_pixel_std(images: torch.Tensor, labels: Sequence[int]) -> Dict[int, float]:
    """For each class present: the pixel-wise std over its images (ddof=1), averaged over pixels.

    images: [N, 8, 8] or [N, 1, 8, 8]; classes with fewer than 2 images are skipped.
    """
    flat = torch.as_tensor(images, dtype=torch.float64).reshape(len(labels), -1)
    labels = torch.from_numpy(np.array(labels, dtype=np.int64))
    out = {}
    for digit in sorted(set(labels.tolist())):
        rows = flat[labels == digit]
        if rows.shape[0] >= 2:
            out[int(digit)] = float(rows.std(dim=0, unbiased=True).mean())
    return out


@lru_cache(maxsize=1)
def real_diversity() -> float:
    """Mean over classes of :func:`per_class_pixel_std` on all real digits: diversity's denominator."""
    images, labels = _load()
    per_class = per_class_pixel_std(torch.from_numpy(np.array(images)), labels)
    return float(np.mean(list(per_class.values())))
