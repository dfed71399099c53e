"""Experiment trackers through accelerate: TensorBoard, Weights & Biases, both, or none (``report_to``).

Each tracker receives the same per-epoch record as metrics.jsonl (its numeric values, at step =
epoch), the run's config, and the pictures (sample grids before and after, the learning curve) as
images. TensorBoard writes to OUTPUT_DIR/tensorboard; wandb (``pip install -e ".[wandb]"``) logs to
the project "elbo_kernels" with the run named after OUTPUT_DIR and its files under $WANDB_DIR/wandb when
that variable is set, else OUTPUT_DIR/wandb (WANDB_MODE=offline keeps it on disk, for ``wandb sync`` later).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import numpy as np

REPORT_TO = ("tensorboard", "wandb", "all", "none")
WANDB_PROJECT = "elbo_kernels"


def tracker_names(report_to: str, tensorboard: bool = True) -> List[str]:
    """The trackers a config asks for; ``tensorboard=False`` (the older key) drops TensorBoard."""
    names = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"], "none": []}
    if report_to not in names:
        raise ValueError(f"config key 'report_to' has value {report_to!r}; allowed: one of "
                         + ", ".join(map(repr, REPORT_TO)))
    return [n for n in names[report_to] if tensorboard or n != "tensorboard"]


def build_trackers(names: List[str], output_dir: Path) -> list:
    """accelerate tracker objects for ``names`` (started later by Accelerator.init_trackers).

    Raises:
        ImportError: wandb is asked for and not installed (the message says how to install it).
    """
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers = []
    if "tensorboard" in names:
        trackers.append(TensorBoardTracker("tensorboard", str(output_dir)))
    if "wandb" in names:
        try:
            import wandb  # noqa: F401
        except ImportError as error:
            raise ImportError("report_to 'wandb' needs the wandb package: pip install -e \".[wandb]\" (or pip "
                              "install wandb); set WANDB_MODE=offline to log without an account") from error
        # A user's WANDB_DIR wins (wandb reads it when no dir is given); else the run's own directory.
        where = Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else output_dir
        (where / "wandb").mkdir(parents=True, exist_ok=True)
        trackers.append(WandBTracker(WANDB_PROJECT, dir=str(where), name=output_dir.name))
    return trackers


def loggable_config(config: Dict) -> Dict:
    """The config values every tracker accepts as hyperparameters (TensorBoard rejects None)."""
    return {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}


def numeric(record: Dict) -> Dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_pictures(accelerator, paths: Dict[str, Path], step: int) -> None:
    """Log PNG files as images (name -> path) to every started tracker."""
    images = {name: _rgb(path) for name, path in paths.items() if path.is_file()}
    if not images:
        return
    for tracker in accelerator.trackers:
        batch = {name: image[None] for name, image in images.items()}  # [1, H, W, 3]
        if tracker.name == "tensorboard":
            tracker.log_images(batch, step=step, dataformats="NHWC")
        else:
            tracker.log_images(batch, step=step)


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
