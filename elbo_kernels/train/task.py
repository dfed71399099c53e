"""What the trainer trains on: a model adapter, a prompt pool, a reward, an evaluation.

The trainer's loop is the same for every task; a task only says where prompts,
rewards and the evaluation metric come from. ``"digits"`` is the embedded
DigitEval default (DESIGN.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

from ..models.base import FlowModelAdapter
from ..rewards import get_reward

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


def load_task(model: str, reward: str, *, device="cpu", eval_seeds: int = 20) -> Task:
    """Build the task named by the config's ``model`` and ``reward`` keys."""
    if model == "digits":
        from ..models import digits

        def evaluate(sampler: Sampler) -> dict:
            return digits.evaluate(sampler, num_seeds=eval_seeds)

        return Task(
            model=digits.DigitsModel.load(device=device),
            prompts=[digits.prompt(d) for d in range(10)],
            reward_fn=get_reward(reward),
            evaluate=evaluate,
            metric="digiteval",
        )
    raise ValueError(
        f"unknown model {model!r}: 'digits' is built in; SD3 hub ids and paths come with the SD3.5 adapter"
    )
