"""The trainer: config, loop, checkpoints, outputs.

    from elbo_kernels.train import Task, TrainConfig, train
    summary = train(TrainConfig(output_dir="outputs/run"), Task(model, prompts, reward_fn))
"""

from .config import TrainConfig
from .task import Task


def __getattr__(name: str):
    # The trainer imports peft, accelerate and diffusers (seconds): only when it is used, so that
    # `elbo-kernels train --help` and config handling stay fast.
    if name in ("Trainer", "NonFiniteError", "RewardError"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(config: TrainConfig, task=None) -> dict:
    """Run a full training job and return its summary (also written to OUTPUT_DIR/summary.json).

    Args:
        config: every knob of the run (:class:`TrainConfig`; ``config.validate()`` runs first).
        task: what to train on: :class:`Task` (a FlowModelAdapter, a prompt pool, a reward function with
            FlowGRPO's signature, optionally an evaluation). None builds it from ``config.model`` and
            ``config.reward`` (the embedded DigitEval task by default).
    Returns:
        the summary dict: ``reward_first`` / ``reward_last``, ``<metric>_before`` / ``_after`` when the task
        evaluates, ``wall_seconds``, ``training_seconds``, ``final_checkpoint``, ...
    Raises:
        ValueError naming the config key for a bad value; RewardError / NonFiniteError (RuntimeError) when
        the reward fails or training meets non-finite values (see docs/reliability.md).
    """
    from .trainer import Trainer

    return Trainer(config, task).fit()


__all__ = ["NonFiniteError", "RewardError", "Task", "TrainConfig", "Trainer", "train"]
