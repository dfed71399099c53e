"""Crash-safe checkpoints: written to a temporary directory, then renamed into place.

Layout of ``OUTPUT_DIR/checkpoints/epoch-000040/``:

    adapter_model.safetensors, adapter_config.json   the evaluation policy (EMA, or the trained
                                                     adapter without EMA), in peft's format, so
                                                     ``digits.load_pipeline(<this dir>)`` loads it
    adapters/<name>/...                              every trained adapter ("default", "old", "ema")
    transformer.safetensors                          full fine-tuning only
    optimizer.pt                                     optimizer state
    trainer_state.json                               epoch, step, history, tracker, config
    rng.pt                                           python / numpy / torch RNG states
    COMPLETE                                         written last: a directory without it is ignored

A rename is atomic on one filesystem, so a kill at any moment leaves either the
previous complete checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

COMPLETE = "COMPLETE"
PREFIX = "epoch-"


def checkpoint_dirs(root: Path) -> List[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: Path) -> Optional[Path]:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def write_checkpoint(root: Path, epoch: int, write_contents, keep: int) -> Path:
    """Create ``root/epoch-XXXXXX`` atomically; ``write_contents(tmp_dir)`` fills it."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{epoch:06d}"
    tmp = root / f".tmp-{PREFIX}{epoch:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_contents(tmp)
    (tmp / COMPLETE).write_text("ok\n")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float))
    os.replace(tmp, path)
