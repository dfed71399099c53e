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
previous complete checkpoint or the new one, never half of one. COMPLETE lists
every file's size; a directory whose files do not match it is ignored (and pruned).
docs/reliability.md has the fault-injection results.
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

from . import faults

COMPLETE = "COMPLETE"
PREFIX = "epoch-"
TRASH = ".trash-"


def _epoch_of(path: Path) -> Optional[int]:
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a COMPLETE marker and every file it lists, at the size it lists.

    The marker is written last, after every file is flushed to disk, and lists each file's size;
    a directory whose files were truncated or removed afterwards (a partial prune, a disk that
    lost unsynced data) is therefore not complete. Markers of older versions ("ok") carry no
    list and are trusted.
    """
    marker = path / COMPLETE
    try:
        text = marker.read_text()
    except OSError:
        return False
    if text.strip() == "ok":
        return True
    try:
        listed = json.loads(text)["files"]
        return all((path / name).stat().st_size == size for name, size in listed.items())
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return False


def checkpoint_dirs(root: Path) -> List[Path]:
    """Complete checkpoints under root, oldest first (incomplete ones are ignored, see is_complete)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _epoch_of(p) is not None and p.is_dir() and is_complete(p)]
    return sorted(found, key=_epoch_of)


def latest_checkpoint(root: Path) -> Optional[Path]:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def write_checkpoint(root: Path, epoch: int, write_contents, keep: int) -> Path:
    """Create ``root/epoch-XXXXXX`` atomically; ``write_contents(tmp_dir)`` fills it.

    Order: contents into a temporary directory, every file fsynced, the COMPLETE marker (with
    each file's size) written and fsynced, one atomic rename, then pruning of older checkpoints
    (each loses its marker before its files). A kill at any instant leaves the previous complete
    checkpoint loadable, and nothing half-written ever looks complete.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{epoch:06d}"
    tmp = root / f".tmp-{PREFIX}{epoch:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_contents(tmp)
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_file(path)
        files[path.relative_to(tmp).as_posix()] = path.stat().st_size
    for directory in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _fsync_dir(directory)
    (tmp / COMPLETE).write_text(json.dumps({"epoch": epoch, "files": files}, indent=1) + "\n")
    _fsync_file(tmp / COMPLETE)
    _fsync_dir(tmp)
    faults.point("checkpoint_rename", epoch)
    if final.exists():
        # Rewriting an epoch (rare): move the old one aside atomically, never delete it in place,
        # so that a kill here cannot leave a marked but half-deleted directory at the final name.
        trash = root / f"{TRASH}{final.name}-{os.getpid()}"
        _remove(trash)
        os.replace(final, trash)
    os.replace(tmp, final)
    _fsync_dir(root)
    faults.point("checkpoint_prune", epoch)
    for old in checkpoint_dirs(root)[:-keep]:
        _remove(old)
    for stale in list(root.glob(f".tmp-{PREFIX}*")) + list(root.glob(f"{TRASH}*")):
        _remove(stale)
    # Leftovers of a prune that was killed (marker already gone). A directory whose marker does
    # not match its files is kept for inspection; it is ignored, never loaded.
    for unmarked in [p for p in root.iterdir() if _epoch_of(p) is not None and not (p / COMPLETE).exists()]:
        _remove(unmarked)
    return final


def _remove(path: Path) -> None:
    """Delete a checkpoint directory, its COMPLETE marker first (a partial delete is never complete)."""
    try:
        (path / COMPLETE).unlink()
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


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
