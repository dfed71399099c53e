"""DigitGenEval: GenEval-style scores per category, overall, and diversity, on fixed prompts and seeds.

The evaluation prompts are 4 per category (24, fixed by ``EVALUATION_PROMPT_SEED``), each
sampled with seeds 0..num_seeds-1 (default 10: 240 canvases). The RL prompt pool,
:func:`training_prompts`, is disjoint from them. A sample scores 1 when the evaluation judge's
detections meet every requirement of its prompt, else 0 (:func:`~.judges.requirement_score`);
a category's score is its mean and "digit_geneval" is the mean over the six categories (GenEval's
overall score). Diversity is DigitEval's measure per prompt instead of per digit: the pixel std
over a prompt's seeds, averaged over pixels and prompts, over the same for real canvases of the
same prompts (:func:`real_diversity`), so 1.0 means as varied as the data.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import List, Optional, Sequence

import numpy as np
import torch

from .canvas import render
from .judges import SlotEvalJudge, SlotRewardJudge, as_canvases, detections, requirement_score
from .model import DigitGenEvalModel
from .pipeline import DigitGenEvalPipeline
from .prompts import CATEGORIES, parse_prompt, prompt, random_composition

NUM_SEEDS = 10
PROMPTS_PER_CATEGORY = 4
TRAINING_PROMPTS_PER_CATEGORY = 10
EVALUATION_PROMPT_SEED = 16
TRAINING_PROMPT_SEED = 17
REAL_SAMPLES_PER_PROMPT = 20


def _distinct(category: str, rng: np.random.Generator, n: int, exclude: Sequence[str] = ()) -> List[str]:
    out: List[str] = []
    for _ in range(1000):
        text = prompt(random_composition(rng, category))
        if text not in out and text not in exclude:
            out.append(text)
        if len(out) == n:
            break
    return out


@lru_cache(maxsize=1)
def _evaluation_prompts() -> tuple:
    rng = np.random.default_rng(EVALUATION_PROMPT_SEED)
    return tuple(p for category in CATEGORIES for p in _distinct(category, rng, PROMPTS_PER_CATEGORY))


def evaluation_prompts(num_seeds: int = NUM_SEEDS):
    """(prompts, seeds): the 24 evaluation prompts (category-major), each with seeds 0..num_seeds-1."""
    base = _evaluation_prompts()
    return [p for p in base for _ in range(num_seeds)], [s for _ in base for s in range(num_seeds)]


@lru_cache(maxsize=1)
def training_prompts() -> List[str]:
    """The RL prompt pool: up to 10 per category (single_object has only 6 left), none of them evaluation prompts."""
    rng = np.random.default_rng(TRAINING_PROMPT_SEED)
    held = _evaluation_prompts()
    return [p for category in CATEGORIES for p in _distinct(category, rng, TRAINING_PROMPTS_PER_CATEGORY, held)]


@lru_cache(maxsize=4)
def _judges(device: str):
    return SlotRewardJudge.load(device), SlotEvalJudge.load(device)


def _prompt_spread(canvases: torch.Tensor, prompts: Sequence[str]) -> float:
    flat = canvases.double().reshape(len(prompts), -1)
    groups = {}
    for i, text in enumerate(prompts):
        groups.setdefault(text, []).append(i)
    spreads = [float(flat[idx].std(dim=0, unbiased=True).mean()) for idx in groups.values() if len(idx) >= 2]
    return float(np.mean(spreads)) if spreads else float("nan")  # one sample per prompt: no spread to measure


@lru_cache(maxsize=1)
def real_diversity() -> float:
    """Diversity's denominator: the per-prompt pixel std of 20 real canvases per evaluation prompt (seed 0)."""
    rng = np.random.default_rng(0)
    prompts = [p for p in _evaluation_prompts() for _ in range(REAL_SAMPLES_PER_PROMPT)]
    canvases = torch.from_numpy(np.stack([render(parse_prompt(p), rng)[0] for p in prompts]))
    return _prompt_spread(canvases, prompts)


def score_images(images, prompts: Sequence[str]) -> dict:
    """DigitGenEval statistics of canvases [N, 3, 16, 16] in [0, 1] made for ``prompts`` [N].

    Returns the dict described in :func:`evaluate` (without "seconds").
    Raises:
        ValueError: shapes, or a prompt that does not parse.
    """
    canvases = as_canvases(images).cpu()
    compositions = [parse_prompt(p) for p in prompts]
    if any(c is None for c in compositions) or len(compositions) != canvases.shape[0]:
        raise ValueError(f"need one non-empty DigitGenEval prompt per image ({canvases.shape[0]} images, "
                         f"{len(compositions)} prompts)")
    reward_judge, eval_judge = _judges("cpu")
    eval_digit, eval_colour = detections(*eval_judge.probabilities(canvases))
    reward_digit, reward_colour = (p.double().numpy() for p in reward_judge.probabilities(canvases))
    reward_hard = detections(torch.from_numpy(reward_digit), torch.from_numpy(reward_colour))
    correct = np.array([requirement_score(c, eval_digit[i], eval_colour[i]) for i, c in enumerate(compositions)])
    reward_correct = np.array([requirement_score(c, reward_hard[0][i], reward_hard[1][i])
                               for i, c in enumerate(compositions)])
    reward = np.array([requirement_score(c, reward_digit[i], reward_colour[i]) for i, c in enumerate(compositions)])
    categories = np.array([c.category for c in compositions])
    per_category = {k: float(correct[categories == k].mean()) for k in CATEGORIES if (categories == k).any()}
    return {
        "digit_geneval": float(np.mean(list(per_category.values()))),
        "per_category": per_category,
        "diversity": _prompt_spread(canvases, prompts) / real_diversity(),
        "reward": float(reward.mean()),
        "reward_accuracy": float(reward_correct.mean()),
        "reward_agreement": float((reward_correct == correct).mean()),
        "num_images": int(len(compositions)),
    }


def evaluate(pipe_or_sampler, num_steps: int = 10, guidance_scale: float = 1.0, *, num_seeds: int = NUM_SEEDS,
             method: Optional[str] = None, return_images: bool = False) -> dict:
    """DigitGenEval of a sampler on the fixed prompts (24 prompts x seeds 0..num_seeds-1).

    Args:
        pipe_or_sampler: a :class:`DigitGenEvalPipeline`, a :class:`DigitGenEvalModel`, or any callable
            ``f(prompts, num_steps=, guidance_scale=, seed=[one int per prompt])`` returning canvases
            [N, 3, 16, 16] in [0, 1].
        num_steps, guidance_scale: for the sampler (defaults: 10 ODE steps, no CFG).
        num_seeds: samples per prompt (keep the default, or at least 2, for comparable numbers).
        method: ODE method for a pipeline; return_images: also return the canvases under "images".
    Returns:
        dict: "digit_geneval" (mean of the category scores), "per_category" {category: fraction of its
        samples meeting every requirement}, "diversity" (ratio to real canvases), "reward" (mean reward
        judge score), "reward_accuracy" (the reward judge's all-or-nothing score), "reward_agreement"
        (fraction where both judges give the same verdict), "num_images", "seconds".
    Raises:
        TypeError: pipe_or_sampler is not callable. ValueError: num_seeds < 2.
    """
    if isinstance(pipe_or_sampler, DigitGenEvalModel):
        pipe_or_sampler = DigitGenEvalPipeline(pipe_or_sampler)
    if not callable(pipe_or_sampler):
        raise TypeError(f"pipe_or_sampler must be a DigitGenEvalPipeline, DigitGenEvalModel or callable, "
                        f"got {type(pipe_or_sampler).__name__}")
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 2:
        raise ValueError(f"num_seeds must be an int >= 2 (diversity needs two samples per prompt), got {num_seeds!r}")
    prompts, seeds = evaluation_prompts(num_seeds)
    start = time.perf_counter()
    kwargs = {"num_steps": num_steps, "guidance_scale": guidance_scale, "seed": seeds}
    if isinstance(pipe_or_sampler, DigitGenEvalPipeline) and method is not None:
        kwargs["method"] = method
    with torch.no_grad():
        images = torch.as_tensor(pipe_or_sampler(prompts, **kwargs)).float().cpu()
    result = score_images(images, prompts)
    result["seconds"] = time.perf_counter() - start
    if return_images:
        result["images"] = images
    return result
