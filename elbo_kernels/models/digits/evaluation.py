"""DigitEval: prompt-following accuracy and diversity of a digits sampler, judged by the evaluation classifier."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from .data import NUM_CLASSES, per_class_pixel_std, prompt, real_diversity
from .judges import EvalJudge, RewardJudge
from .model import DigitsModel
from .pipeline import DigitsPipeline

NUM_SEEDS = 20
"""Images per digit in the fixed DigitEval prompt set (seeds 0..19): 200 images."""


@lru_cache(maxsize=4)
def _judges(device: str):
    return RewardJudge.load(device), EvalJudge.load(device)


def evaluation_prompts(num_seeds: int = NUM_SEEDS):
    """(prompts, digits, seeds): every digit 0-9 with seeds 0..num_seeds-1, digit-major."""
    digits = [d for d in range(NUM_CLASSES) for _ in range(num_seeds)]
    seeds = [s for _ in range(NUM_CLASSES) for s in range(num_seeds)]
    return [prompt(d) for d in digits], np.asarray(digits), seeds


def score_images(images, digits) -> dict:
    """DigitEval statistics of given images [N, 8, 8] or [N, 1, 8, 8] in [0, 1] prompted with ``digits`` [N]."""
    images = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 8, 8).cpu().clamp(0, 1)
    digits = np.asarray(digits)
    reward_judge, eval_judge = _judges("cpu")
    eval_probs = eval_judge.probabilities(images).numpy()
    reward_probs = reward_judge.probabilities(images).numpy()
    eval_pred = eval_probs.argmax(1)
    reward_pred = reward_probs.argmax(1)
    correct = eval_pred == digits
    per_class = per_class_pixel_std(images, digits)
    real = real_diversity()
    return {
        "digiteval": float(correct.mean()),
        # Not measured (None) without 2 images of some digit (eval_seeds 1): a std needs two, and numpy's
        # NaN and warning are not a measurement.
        "diversity": float(np.mean(list(per_class.values())) / real) if per_class else None,
        "reward_agreement": float((reward_pred == eval_pred).mean()),
        "reward": float(reward_probs[np.arange(len(digits)), digits].mean()),
        "reward_accuracy": float((reward_pred == digits).mean()),
        "per_digit": {int(d): float(correct[digits == d].mean()) for d in np.unique(digits)},
        "per_digit_diversity": {d: s / real for d, s in per_class.items()},
        "num_images": int(len(digits)),
    }


def evaluate(
    pipe_or_sampler,
    num_steps: int = 10,
    guidance_scale: float = 1.0,
    *,
    num_seeds: int = NUM_SEEDS,
    method: Optional[str] = None,
    return_images: bool = False,
) -> dict:
    """DigitEval of a sampler on the fixed prompt set (every digit x seeds 0..19 = 200 images).

    Args:
        pipe_or_sampler: a :class:`DigitsPipeline`, a :class:`DigitsModel` (wrapped in one),
            or any callable ``f(prompts, num_steps=, guidance_scale=, seed=)`` returning images
            [N, 8, 8] or [N, 1, 8, 8] in [0, 1], where ``seed`` is a list of one int per prompt.
        num_steps, guidance_scale: passed to the sampler (defaults: 10 ODE steps, no CFG).
        num_seeds: images per digit (keep the default for comparable numbers).
        method: ODE method for a pipeline ("euler" / "dpm2"); ignored for other callables.
        return_images: also return the images [N, 8, 8] under "images" (digit-major).
    Returns:
        dict with
        "digiteval": fraction the evaluation judge assigns to the prompted digit;
        "diversity": mean per-class pixel std of the samples / the same on real digits (None, not
            measured, with num_seeds 1: a std needs two images of a digit);
        "reward_agreement": fraction where the reward and evaluation judges' argmaxes agree;
        "reward": mean reward (reward judge's probability of the prompted digit);
        "reward_accuracy": the reward judge's own accuracy on the samples;
        "per_digit": {digit: DigitEval}; "per_digit_diversity": {digit: ratio};
        "num_images", "seconds" (sampling plus judging).
    Raises:
        TypeError: pipe_or_sampler is not callable.
    """
    if isinstance(pipe_or_sampler, DigitsModel):
        pipe_or_sampler = DigitsPipeline(pipe_or_sampler)
    if not callable(pipe_or_sampler):
        raise TypeError(f"pipe_or_sampler must be a DigitsPipeline, DigitsModel or callable, got {type(pipe_or_sampler).__name__}")
    prompts, digits, seeds = evaluation_prompts(num_seeds)
    start = time.perf_counter()
    kwargs = {"num_steps": num_steps, "guidance_scale": guidance_scale, "seed": seeds}
    if isinstance(pipe_or_sampler, DigitsPipeline) and method is not None:
        kwargs["method"] = method
    with torch.no_grad():
        images = pipe_or_sampler(prompts, **kwargs)
    images = torch.as_tensor(images).float().reshape(len(prompts), 8, 8).cpu()
    result = score_images(images, digits)
    result["seconds"] = time.perf_counter() - start
    if return_images:
        result["images"] = images
    return result
