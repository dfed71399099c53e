"""DigitGenEval: a GenEval-like embedded task on 3 x 16 x 16 canvases of coloured digits.

- :func:`prompt` / :func:`parse_prompt`: :class:`Composition` <-> "a red 3 left of a blue 8" (six GenEval categories).
- :func:`render`: a real canvas for a composition (the data the base model and the judges learn from).
- :class:`DigitGenEvalModel`: the tiny SD3 transformer + a word-level prompt encoder (FlowModelAdapter).
- :func:`load_pipeline`: prompts -> canvases [N, 3, 16, 16] in [0, 1], optional LoRA checkpoint.
- :class:`SlotRewardJudge` (MLP, the reward) and :class:`SlotEvalJudge` (CNN, the metric), :func:`reward_fn`.
- :func:`evaluate`: per-category and overall all-or-nothing scores and diversity on 24 fixed prompts.

Weights ship in ``elbo_kernels/models/weights``; rebuild with
``python -m elbo_kernels.models.digit_geneval.train_judges`` then
``python -m elbo_kernels.models.digit_geneval.pretrain``. See docs/digit_geneval.md.
"""

from .canvas import CANVAS_SHAPE, DigitSource, relation_holds, render, slots
from .evaluation import evaluate, evaluation_prompts, real_diversity, score_images, training_prompts
from .judges import SlotEvalJudge, SlotRewardJudge, judges_metadata, requirement_score, reward_fn
from .model import CompositionEncoder, DigitGenEvalModel, decode_latents, encode_canvases
from .pipeline import DigitGenEvalPipeline, load_pipeline
from .prompts import CATEGORIES, COLOURS, RELATIONS, Composition, parse_prompt, prompt, random_composition, tokenize

__all__ = [
    "CANVAS_SHAPE",
    "CATEGORIES",
    "COLOURS",
    "Composition",
    "CompositionEncoder",
    "DigitGenEvalModel",
    "DigitGenEvalPipeline",
    "DigitSource",
    "RELATIONS",
    "SlotEvalJudge",
    "SlotRewardJudge",
    "decode_latents",
    "encode_canvases",
    "evaluate",
    "evaluation_prompts",
    "judges_metadata",
    "load_pipeline",
    "parse_prompt",
    "prompt",
    "random_composition",
    "real_diversity",
    "relation_holds",
    "render",
    "requirement_score",
    "reward_fn",
    "score_images",
    "slots",
    "tokenize",
    "training_prompts",
]
