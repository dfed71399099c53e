"""The trainer: config, loop, checkpoints, outputs."""

from .config import TrainConfig
from .trainer import NonFiniteError, Trainer


def train(config: TrainConfig, task=None) -> dict:
    """Run a full training job and return its summary (also written to OUTPUT_DIR/summary.json)."""
    return Trainer(config, task).fit()


__all__ = ["NonFiniteError", "TrainConfig", "Trainer", "train"]
