"""The DigitGenEval judges: per-slot detectors of (digit or empty, colour), and the prompt checks.

Each judge looks at the four 8x8 slots of a canvas separately and returns, per slot,
logits over 11 classes (digits 0-9 and EMPTY) and over the 4 colours. The reward judge is
an MLP trained on digits of the "reward_train" split; the evaluation judge a CNN trained on
the disjoint "eval_train" split (the splits of :func:`elbo_kernels.models.digits.judge_splits`),
so the metric is not the function RL optimises.

A prompt's requirements (GenEval's rules, on slots) are checked by :func:`requirement_score`:
given per-slot probabilities it returns the probability of the best arrangement that meets
them; given one-hot detections it is exactly 1 when they are met and 0 otherwise (GenEval's
all-or-nothing score). The reward is the soft form with the reward judge's probabilities.
"""

from __future__ import annotations

import json
from functools import lru_cache
from itertools import permutations
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .canvas import CANVAS_SHAPE, SLOTS, relation_holds, slots
from .prompts import COLOUR_NAMES, Composition, parse_prompt

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "digit_geneval"
JUDGES_METADATA = WEIGHTS_DIR / "judges.json"
EMPTY = 10
NUM_DIGIT_CLASSES = 11
NUM_COLOURS = len(COLOUR_NAMES)


def as_canvases(images) -> torch.Tensor:
    """float32 [N, 3, 16, 16] in [0, 1] (clamped). Raises ValueError for another shape."""
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).float()
    if images.dim() != 4 or tuple(images.shape[1:]) != CANVAS_SHAPE:
        raise ValueError(f"images must be [N, 3, 16, 16] canvases, got shape {tuple(images.shape)}")
    return images.clamp(0, 1)


class _SlotJudge(nn.Module):
    weights_file: str = ""

    @classmethod
    def load(cls, device="cpu") -> "_SlotJudge":
        """The shipped weights, eval mode, gradients off.

        Raises:
            FileNotFoundError: weights missing (run ``python -m elbo_kernels.models.digit_geneval.train_judges``).
        """
        from safetensors.torch import load_file

        path = WEIGHTS_DIR / cls.weights_file
        if not path.is_file():
            raise FileNotFoundError(f"{cls.__name__} weights not found at {path}; run "
                                    "`python -m elbo_kernels.models.digit_geneval.train_judges`")
        judge = cls()
        judge.load_state_dict(load_file(str(path)))
        return judge.requires_grad_(False).to(device).eval()

    def slot_logits(self, slot_images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """slot images [M, 3, 8, 8] -> (digit logits [M, 11], colour logits [M, 4])."""
        out = self(slot_images)
        return out[:, :NUM_DIGIT_CLASSES], out[:, NUM_DIGIT_CLASSES:]

    @torch.no_grad()
    def probabilities(self, images) -> Tuple[torch.Tensor, torch.Tensor]:
        """Canvases [N, 3, 16, 16] -> (digit probabilities [N, 4, 11], colour probabilities [N, 4, 4])."""
        canvases = as_canvases(images).to(next(self.parameters()).device)
        n = canvases.shape[0]
        digit, colour = self.slot_logits(slots(canvases).reshape(n * SLOTS, 3, 8, 8))
        return digit.softmax(1).reshape(n, SLOTS, -1).cpu(), colour.softmax(1).reshape(n, SLOTS, -1).cpu()


class SlotRewardJudge(_SlotJudge):
    """MLP 192 -> 256 -> 256 -> 15 (11 digit-or-empty logits, 4 colour logits); the reward model."""

    weights_file = "reward_judge.safetensors"

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 64, 256), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(256, 256), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(256, NUM_DIGIT_CLASSES + NUM_COLOURS),
        )

    def forward(self, slot_images: torch.Tensor) -> torch.Tensor:
        return self.net(slot_images)


class SlotEvalJudge(_SlotJudge):
    """Small CNN (3 convs, max-pool, linear head to 11 + 4 logits); the DigitGenEval evaluator."""

    weights_file = "eval_judge.safetensors"

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, NUM_DIGIT_CLASSES + NUM_COLOURS))

    def forward(self, slot_images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(slot_images))


def judges_metadata() -> dict:
    """The shipped judges' json record (accuracies, splits, seeds)."""
    return json.loads(JUDGES_METADATA.read_text())


def _pairs(relation: Optional[str]):
    return [(s, t) for s, t in permutations(range(SLOTS), 2) if relation is None or relation_holds(relation, s, t)]


def requirement_score(composition: Composition, digit_probs: np.ndarray, colour_probs: np.ndarray) -> float:
    """Probability of the best slot arrangement that meets the composition (one image).

    digit_probs [4, 11], colour_probs [4, 4] (rows are probabilities, or one-hot detections).
    single_object / colors: max over slots of p(digit) (times p(colour)); two_object: max over
    two different slots; position / color_attr: max over slot pairs in the relation; counting:
    the count's most likely slots hold the digit and the others do not. With one-hot rows the
    result is 1.0 exactly when GenEval's rule holds, else 0.0.
    """
    c = composition

    def weight(i: int) -> np.ndarray:
        p = digit_probs[:, c.digits[i]]
        colour = c.colours[i]
        return p * colour_probs[:, COLOUR_NAMES.index(colour)] if colour is not None else p

    if c.category == "counting":
        p = np.sort(digit_probs[:, c.digits[0]])[::-1]
        return float(np.prod(p[:c.count]) * np.prod(1 - p[c.count:]))
    first = weight(0)
    if len(c.digits) == 1:
        return float(first.max())
    second = weight(1)
    return float(max(first[s] * second[t] for s, t in _pairs(c.relation)))


def detections(digit_probs: torch.Tensor, colour_probs: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """One-hot argmax detections: (digits [N, 4, 11], colours [N, 4, 4]) float64 arrays."""
    digit = np.eye(NUM_DIGIT_CLASSES)[digit_probs.argmax(-1).numpy()]
    colour = np.eye(NUM_COLOURS)[colour_probs.argmax(-1).numpy()]
    return digit, colour


def prompt_compositions(prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None) -> list:
    """The composition each prompt names; an empty prompt needs metadata[i]["prompt"] naming one.

    Raises:
        TypeError: a bare str. ValueError: lengths differ, a prompt names nothing, or metadata disagrees.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, got a single str")
    if metadata is not None and len(metadata) != len(prompts):
        raise ValueError(f"metadata has {len(metadata)} entries for {len(prompts)} prompts")
    out = []
    for i, text in enumerate(prompts):
        named = parse_prompt(text)
        given = metadata[i].get("prompt") if metadata is not None and isinstance(metadata[i], dict) else None
        given = parse_prompt(given) if given else None
        if named is not None and given is not None and named != given:
            raise ValueError(f"prompt {i} {text!r} differs from metadata[{i}]['prompt']")
        if named is None and given is None:
            raise ValueError(f"prompt {i} is unconditional ({text!r}) and its metadata names no 'prompt'")
        out.append(named or given)
    return out


@lru_cache(maxsize=4)
def _reward_judge(device: str) -> SlotRewardJudge:
    return SlotRewardJudge.load(device)


def reward_fn(images, prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None) -> Tuple[Dict[str, np.ndarray], dict]:
    """FlowGRPO-style reward: the reward judge's :func:`requirement_score` of each image's prompt.

    Args:
        images: canvases [N, 3, 16, 16] in [0, 1] (torch or numpy).
        prompts: N DigitGenEval prompts; metadata: optional N dicts (see :func:`prompt_compositions`).
    Returns:
        (scores, info): scores {"geneval": float32 [N], "avg": the same}; info {"accuracy": the
        fraction meeting their prompt by the reward judge's argmax detections}.
    Raises:
        ValueError: image shape, prompt or metadata problems, or as many images as prompts not given.
    """
    canvases = as_canvases(images)
    compositions = prompt_compositions(prompts, metadata)
    if len(compositions) != canvases.shape[0]:
        raise ValueError(f"got {canvases.shape[0]} images for {len(compositions)} prompts")
    digit_probs, colour_probs = _reward_judge(str(canvases.device)).probabilities(canvases)
    digit_probs, colour_probs = digit_probs.double().numpy(), colour_probs.double().numpy()
    hard_digit, hard_colour = detections(torch.from_numpy(digit_probs), torch.from_numpy(colour_probs))
    reward = np.array([requirement_score(c, digit_probs[i], colour_probs[i]) for i, c in enumerate(compositions)],
                      dtype=np.float32)
    strict = [requirement_score(c, hard_digit[i], hard_colour[i]) for i, c in enumerate(compositions)]
    return {"geneval": reward, "avg": reward.copy()}, {"accuracy": float(np.mean(strict))}
