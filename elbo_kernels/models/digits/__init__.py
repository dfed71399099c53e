"""DigitEval: the embedded default job, a miniature of SD3.5 + GenEval that runs on a laptop.

- :func:`prompt` / :func:`parse_prompt`: "a handwritten 7" <-> 7.
- :class:`DigitsModel`: tiny SD3 transformer + learned prompt encoder (FlowModelAdapter).
- :func:`load_pipeline`: prompts -> images [N, 8, 8] in [0, 1], optional LoRA checkpoint.
- :class:`RewardJudge` (MLP) and :class:`EvalJudge` (CNN), :func:`reward_fn`.
- :func:`evaluate`: DigitEval, diversity and reward/eval agreement on 200 fixed samples.

Weights ship in ``elbo_kernels/models/weights``; scripts that rebuild them:
``python -m elbo_kernels.models.digits.train_judges`` then
``python -m elbo_kernels.models.digits.pretrain``. See docs/digiteval.md.
"""

from .data import (
    judge_splits,
    load_images,
    parse_prompt,
    prompt,
    real_diversity,
    to_latents,
)
from .evaluation import evaluate, evaluation_prompts, score_images
from .judges import EvalJudge, RewardJudge, judges_metadata, prompt_digits, reward_fn
from .model import LORA_TARGET_MODULES, DigitsModel, PromptEncoder
from .pipeline import DigitsPipeline, initial_noise, load_pipeline, resolve_adapter_dir

__all__ = [
    "DigitsModel",
    "DigitsPipeline",
    "EvalJudge",
    "LORA_TARGET_MODULES",
    "PromptEncoder",
    "RewardJudge",
    "evaluate",
    "evaluation_prompts",
    "initial_noise",
    "judge_splits",
    "judges_metadata",
    "load_images",
    "load_pipeline",
    "parse_prompt",
    "prompt",
    "prompt_digits",
    "real_diversity",
    "resolve_adapter_dir",
    "reward_fn",
    "score_images",
    "to_latents",
]
