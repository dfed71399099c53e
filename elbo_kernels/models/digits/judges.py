"""The two digit classifiers: the reward judge (an MLP) and the evaluation judge (a CNN).

They differ in architecture and in training images (disjoint halves of the
non-held-out digits, :func:`~elbo_kernels.models.digits.data.judge_splits`), so
a policy that exploits the reward judge's quirks does not automatically fool
the metric. Both take images [N, 8, 8] or [N, 1, 8, 8] in [0, 1] and return
logits [N, 10].
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .data import NUM_CLASSES, parse_prompt

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
JUDGES_METADATA = WEIGHTS_DIR / "digits_judges.json"


def _as_images(images) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"images must be [N, 8, 8] or [N, 1, 8, 8], got shape {tuple(images.shape)}")
    return images.float()


class _Judge(nn.Module):
    weights_file: str = ""

    @classmethod
    def load(cls, device="cpu") -> "_Judge":
        """The shipped weights, in eval mode with gradients off.

        Raises:
            FileNotFoundError: weights missing (run ``python -m elbo_kernels.models.digits.train_judges``).
        """
        from safetensors.torch import load_file

        path = WEIGHTS_DIR / cls.weights_file
        if not path.is_file():
            raise FileNotFoundError(
                f"{cls.__name__} weights not found at {path}; run `python -m elbo_kernels.models.digits.train_judges`"
            )
        judge = cls()
        judge.load_state_dict(load_file(str(path)))
        return judge.requires_grad_(False).to(device).eval()

    @torch.no_grad()
    def probabilities(self, images) -> torch.Tensor:
        """Softmax probabilities [N, 10] float32 for images in [0, 1] (clamped)."""
        device = next(self.parameters()).device
        return self(_as_images(images).to(device).clamp(0, 1)).softmax(dim=1)


class RewardJudge(_Judge):
    """MLP 64 -> 256 -> 256 -> 10 (GELU, dropout); the reward classifier."""

    weights_file = "digits_reward_judge.safetensors"

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 256), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(256, 256), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(256, NUM_CLASSES),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(_as_images(images))


class EvalJudge(_Judge):
    """Small CNN (3 convs, max-pool, linear head); the DigitEval classifier."""

    weights_file = "digits_eval_judge.safetensors"

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(_as_images(images)))


def judges_metadata() -> dict:
    """The shipped judges' json record (held-out accuracies, split sizes and seeds)."""
    return json.loads(JUDGES_METADATA.read_text())


@lru_cache(maxsize=4)
def _reward_judge(device: str) -> RewardJudge:
    return RewardJudge.load(device)


def prompt_digits(prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None) -> np.ndarray:
    """int64 [N]: the digit each sample was asked for.

    The prompt names the digit; a metadata entry with a "digit" key must agree
    with it (a mismatch is an error, never a silent choice). An empty prompt is
    allowed only when its metadata entry gives the digit.

    Raises:
        ValueError: lengths differ, a prompt names no digit, or metadata disagrees.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, got a single str")
    if metadata is not None and len(metadata) != len(prompts):
        raise ValueError(f"metadata has {len(metadata)} entries for {len(prompts)} prompts")
    digits = []
    for i, text in enumerate(prompts):
        named = parse_prompt(text)
        given = None
        if metadata is not None and isinstance(metadata[i], dict) and "digit" in metadata[i]:
            given = int(metadata[i]["digit"])
        if named is not None and given is not None and named != given:
            raise ValueError(f"prompt {i} {text!r} names {named} but metadata[{i}]['digit'] is {given}")
        digit = named if named is not None else given
        if digit is None:
            raise ValueError(f"prompt {i} is unconditional ({text!r}) and its metadata gives no 'digit'")
        digits.append(digit)
    return np.asarray(digits, dtype=np.int64)


def reward_fn(images, prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None) -> Tuple[Dict[str, np.ndarray], dict]:
    """FlowGRPO-style reward: the reward judge's probability of the prompted digit.

    Args:
        images: [N, 8, 8] or [N, 1, 8, 8] in [0, 1] (torch tensor or numpy array).
        prompts: N prompts naming digits (see :func:`prompt_digits` for metadata).
        metadata: optional N dicts; a "digit" entry is checked against the prompt.
    Returns:
        (scores, info): scores {"digit": float32 [N], "avg": float32 [N]} (identical: one
        reward), info {"accuracy": fraction whose argmax is the prompted digit,
        "predicted": int64 [N] argmax digits}.
    Raises:
        ValueError: image shape, prompt/metadata problems (see :func:`prompt_digits`).
    """
    images = _as_images(images)
    digits = prompt_digits(prompts, metadata)
    if len(digits) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images for {len(digits)} prompts")
    device = str(images.device)
    probs = _reward_judge(device).probabilities(images).cpu().numpy()
    reward = probs[np.arange(len(digits)), digits].astype(np.float32)
    predicted = probs.argmax(axis=1)
    return (
        {"digit": reward, "avg": reward.copy()},
        {"accuracy": float((predicted == digits).mean()), "predicted": predicted},
    )
