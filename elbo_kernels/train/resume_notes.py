"""What ``resume`` tells the user: which checkpoint a run continues from, and that a finished run
has nothing left to do.

A run is finished when its summary.json was written after its newest checkpoint's epoch and, under
the stopping settings it is resumed with (``epochs``, ``stop_at``), it would stop there: it reached
``epochs``, or its last evaluation reached ``stop_at``. Resuming a finished run changes nothing
(no training, no file written) and returns its summary; raising ``epochs`` or ``stop_at`` (or
setting ``stop_at`` to none) continues it.

(Kept apart from state.py, which loads checkpoints, and outputs.py, which claims directories.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .checkpoint import latest_checkpoint
from .errors import option


def finished_summary(config) -> Optional[dict]:
    """The summary of the finished run in ``config.output_dir`` (module docstring), else None."""
    root = Path(config.output_dir)
    try:
        summary = json.loads((root / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    newest = latest_checkpoint(root / "checkpoints")
    epochs = summary.get("epochs")
    if newest is None or not isinstance(epochs, int) or newest.name != f"epoch-{epochs:06d}":
        return None  # trained past the summary (a resumed run since), or the summary is not this run's
    return summary if stop_reason(summary, config) is not None else None


def stop_reason(summary: dict, config) -> Optional[str]:
    """Why the run of ``summary`` stops where it is under ``config``'s stopping settings, or None."""
    metric = summary.get("metric", "digiteval")
    reached = summary.get(f"{metric}_after")
    if config.stop_at is not None and isinstance(reached, (int, float)) and reached >= config.stop_at:
        return f"{metric} {reached:.3f} >= stop_at {config.stop_at:g}"
    if summary["epochs"] >= config.epochs:
        return f"epochs {config.epochs} done"
    return None


def finished_line(summary: dict, config) -> str:
    return (f"the run in {config.output_dir} finished at epoch {summary['epochs']} "
            f"({stop_reason(summary, config)}): nothing to do, nothing changed; raise {option('epochs', None)} or "
            f"{option('stop_at', None)} to train it further")


def resumed_line(checkpoint: Path, epoch: int, epochs: int) -> str:
    return f"resuming from {checkpoint} (epoch {epoch} of {epochs})"
