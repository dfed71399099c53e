"""What the trainer trains on: a model adapter, a prompt pool, a reward, an evaluation.

The trainer's loop is the same for every task; a task only says where prompts,
rewards and the evaluation metric come from. ``"digits"`` is the embedded
DigitEval default (docs/design.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

from ..models.base import FlowModelAdapter
from ..rewards import get_reward
from ..rewards.video import video_reward
from .errors import ConfigError

# sampler(prompts, num_steps=..., guidance_scale=..., seed=[one int per prompt]) -> images
Sampler = Callable
Evaluator = Callable[[Sampler], dict]


@dataclass
class Task:
    model: FlowModelAdapter
    prompts: List[str]
    reward_fn: Callable
    evaluate: Optional[Evaluator] = None
    metric: str = "digiteval"


def _reward(name: str) -> Callable:
    """get_reward, with its ValueError (a bad name, a missing server URL) reported as a config error."""
    try:
        return get_reward(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def load_task(model: str, reward: str, *, device="cpu", eval_seeds: int = 20, prompts: Optional[str] = None,
              weights_dtype: Optional[str] = None, resolution: Optional[int] = None,
              gradient_checkpointing: Optional[bool] = None, without_t5: Optional[bool] = None,
              frames: Optional[int] = None, guidance: Optional[float] = None,
              lora_target_modules: Optional[str] = None, task: str = "digiteval") -> Task:
    """Build the task named by the config's ``model`` and ``reward`` keys.

    model: "digits" (embedded: ``task`` "digiteval", or "digit_geneval" for the GenEval-like
    compositions of docs/digit_geneval.md, whose reward judge replaces the default reward "digit"),
    or a hub id or local diffusers folder whose model_index.json names a supported pipeline
    (SD3 / SD3.5, FLUX.1, Wan 2.x text-to-video, Qwen-Image; see :mod:`elbo_kernels.models.pipelines`).
    For those the keyword arguments (or, when they are None, the environment variables in brackets)
    choose:

        prompts                 prompt file, .txt or FlowGRPO's .jsonl with metadata  [ELBO_KERNELS_PROMPTS]
                                (default: a small built-in list of generic prompts)
        weights_dtype           fp32 | bf16 | fp16 for the frozen weights             [ELBO_KERNELS_WEIGHTS_DTYPE]
        resolution              pixels (512, or the model's native size if smaller)   [ELBO_KERNELS_RESOLUTION]
        gradient_checkpointing  true | false (false)                         [ELBO_KERNELS_GRADIENT_CHECKPOINTING]
        without_t5              true | false: drop T5-XXL (false; SD3 only)            [ELBO_KERNELS_WITHOUT_T5]
        frames                  video frames (Wan only; 4k + 1)                        [ELBO_KERNELS_FRAMES]
        guidance                FLUX.1-dev's embedded guidance (3.5)                   [ELBO_KERNELS_GUIDANCE]
        lora_target_modules     comma-separated module names (the family's default)   [ELBO_KERNELS_LORA_TARGETS]

    Video models are rewarded frame by frame with the image reward; a video's reward is the mean
    over its frames.

    The reward receives each prompt's metadata from a .jsonl prompt file (GenEval needs it).
    The evaluation is the mean reward of the evaluation policy on the first 8 prompts x
    ``eval_seeds`` fixed seeds (metric "reward_eval").

    Raises:
        ValueError: unknown reward or bad option values. ModelNotAvailableError (OSError): SD3
        weights not available locally and the hub not reachable (the message says how to fix it).
        FileNotFoundError: the prompt file does not exist.
    """
    if task not in ("digiteval", "digit_geneval"):
        raise ConfigError(f"config key 'task' has value {task!r}; allowed: 'digiteval', 'digit_geneval'")
    if task == "digit_geneval":
        if model != "digits":
            raise ConfigError(f"config key 'task' is 'digit_geneval', an embedded task: it needs model 'digits', "
                              f"got {model!r}")
        from ..models import digit_geneval

        return Task(
            model=digit_geneval.DigitGenEvalModel.load(device=device),
            prompts=digit_geneval.training_prompts(),
            reward_fn=_reward("digit_geneval" if reward == "digit" else reward),
            evaluate=lambda sampler: digit_geneval.evaluate(sampler, num_seeds=max(2, eval_seeds)),
            metric="digit_geneval",
        )
    if model == "digits":
        from ..models import digits

        def evaluate(sampler: Sampler) -> dict:
            return digits.evaluate(sampler, num_seeds=eval_seeds)

        return Task(
            model=digits.DigitsModel.load(device=device),
            prompts=[digits.prompt(d) for d in range(10)],
            reward_fn=_reward(reward),
            evaluate=evaluate,
            metric="digiteval",
        )
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be 'digits' or an SD3 hub id / local path, got {model!r}")
    import os

    import numpy as np

    from ..models.pipelines import load_model
    from ..models.sd3 import DEFAULT_PROMPTS, read_prompts

    def option(value, env: str, default, kind=str):
        value = os.environ.get(env) if value is None else value
        if value is None or value == "":
            return default
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"{env} must be true or false, got {value!r}")
            return value.lower() in ("1", "true", "yes", "on")
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{env} must be a {kind.__name__}, got {value!r}") from None

    prompt_file = option(prompts, "ELBO_KERNELS_PROMPTS", None)
    pool, table = read_prompts(prompt_file) if prompt_file else (list(DEFAULT_PROMPTS), {})
    reward_fn = _reward(reward)  # before the (large) model: a bad reward name fails fast
    targets = option(lora_target_modules, "ELBO_KERNELS_LORA_TARGETS", None)
    adapter = load_model(
        model, device=device,
        weights_dtype=option(weights_dtype, "ELBO_KERNELS_WEIGHTS_DTYPE", None),
        resolution=option(resolution, "ELBO_KERNELS_RESOLUTION", None, int),
        gradient_checkpointing=option(gradient_checkpointing, "ELBO_KERNELS_GRADIENT_CHECKPOINTING", False, bool),
        without_t5=option(without_t5, "ELBO_KERNELS_WITHOUT_T5", False, bool),
        frames=option(frames, "ELBO_KERNELS_FRAMES", None, int),
        guidance=option(guidance, "ELBO_KERNELS_GUIDANCE", None, float),
        lora_target_modules=targets.split(",") if isinstance(targets, str) else targets,
    )

    def reward_with_metadata(images, prompts_, metadata=None, **kwargs):
        if metadata is None and any(table.get(p) for p in prompts_):
            metadata = [table.get(p, {}) for p in prompts_]
        if images.dim() == 5:  # video [N, C, F, H, W]
            return video_reward(reward_fn, images, prompts_, metadata, **kwargs)
        return reward_fn(images, prompts_, metadata, **kwargs)

    eval_prompts = pool[:8]

    def evaluate_sd3(sampler: Sampler) -> dict:
        rows = [(p, s) for p in eval_prompts for s in range(eval_seeds)]
        scores = []
        for start in range(0, len(rows), 16):  # bounded batches: SD3 activations are large
            chunk = rows[start:start + 16]
            images = sampler([p for p, _ in chunk], seed=[s for _, s in chunk])
            result, _ = reward_with_metadata(images, [p for p, _ in chunk], None)
            scores.append(np.asarray(result["avg"], dtype=np.float64))
        return {"reward_eval": float(np.concatenate(scores).mean())}

    return Task(model=adapter, prompts=pool, reward_fn=reward_with_metadata, evaluate=evaluate_sd3,
                metric="reward_eval")
