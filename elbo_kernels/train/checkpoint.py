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
every file's size and sha256 (elbo_kernels/_checksums.py): listing and pruning
compare sizes (cheap), resuming and loading an adapter compare contents, and a
checkpoint that fails is never loaded. A failed write (no space, no permission)
removes its temporary directory and raises StorageError naming the path.
docs/reliability.md has the fault-injection results.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .._checksums import COMPLETE, manifest, sizes_match
from . import faults
from .errors import option, storage_cause, storage_error

PREFIX = "epoch-"
TRASH = ".trash-"
TMP = ".tmp-"
# A checkpoint that failed verification is renamed to this prefix: kept for inspection, never
# loaded, and out of the count that pruning keeps.
CORRUPT = "corrupt-"


def _epoch_of(path: Path) -> Optional[int]:
    digits = path.name[len(PREFIX):]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a COMPLETE marker and every file it lists, at the size it lists.

    The marker is written last, after every file is flushed to disk; a directory whose files
    were truncated or removed afterwards (a partial prune, a disk that lost unsynced data) is
    therefore not complete. This compares sizes only: contents are verified (hashes) before a
    checkpoint is loaded (``_checksums.verify``). Markers of older versions ("ok") are trusted.
    """
    return sizes_match(path)


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
    final = root / f"{PREFIX}{epoch:06d}"
    tmp = root / f"{TMP}{PREFIX}{epoch:06d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_contents(tmp)
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(path)
        for directory in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _fsync_dir(directory)
        (tmp / COMPLETE).write_text(json.dumps(manifest(tmp, epoch), indent=1) + "\n")
        _fsync_file(tmp / COMPLETE)
        _fsync_dir(tmp)
    except Exception as error:
        if storage_cause(error) is None:
            raise
        # The half-written directory holds the space the next attempt needs; the previous
        # complete checkpoint is untouched.
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(root)
        raise storage_error(error, root, what=f"write checkpoint {final.name} in", next_step=(
            f"the last complete checkpoint ({previous.name if previous else 'none'}) is intact: free some space, "
            f"then run again with {option('resume')}")) from error
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
    tidy(root, keep, protect=final)
    return final


def tidy(root: Path, keep: int, protect: Optional[Path] = None) -> None:
    """Remove what a killed run can leave behind, and prune to ``keep`` complete checkpoints.

    Removes temporary and trash directories (a kill during a write or a rewrite), epoch
    directories without a marker (a kill during a prune), and the oldest complete checkpoints
    beyond ``keep``. ``protect`` (the checkpoint just written, or the one just resumed from) is
    never removed, whatever its epoch. A directory whose marker does not match its files is
    kept for inspection; it is ignored, never loaded. Run by every checkpoint write and at the
    start of every run and resume.
    """
    if not root.is_dir():
        return
    complete = checkpoint_dirs(root)
    others = [d for d in complete if protect is None or d.resolve() != protect.resolve()]
    excess = len(others) - (keep - 1 if len(others) < len(complete) else keep)
    for old in others[:max(0, excess)]:
        _remove(old)
    for stale in list(root.glob(f"{TMP}{PREFIX}*")) + list(root.glob(f"{TRASH}*")):
        _remove(stale)
    for unmarked in [p for p in root.iterdir() if _epoch_of(p) is not None and not (p / COMPLETE).exists()]:
        _remove(unmarked)


def quarantine(path: Path) -> Path:
    """Rename a checkpoint that failed verification to ``corrupt-epoch-XXXXXX`` (kept, never loaded)."""
    target = path.with_name(CORRUPT + path.name)
    index = 1
    while target.exists():
        index += 1
        target = path.with_name(f"{CORRUPT}{path.name}.{index}")
    os.replace(path, target)
    return target


def save_torch(value, path: Path) -> None:
    """torch.save through memory: a full disk then raises OSError naming the file (torch's own zip
    writer reports it as "unexpected pos ...", which says nothing about space)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


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
    """Python, numpy and torch RNG states as tensors and plain values (``rng.pt`` loads with weights_only=True)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = dict(numpy_state["state"], key=numpy_state["state"]["key"].tolist())
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s value (or an older checkpoint's, whose numpy state is a tuple)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = dict(numpy_state, state=dict(numpy_state["state"],
                                                   key=np.asarray(numpy_state["state"]["key"], dtype=np.uint32)))
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])


def write_json(path: Path, value) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float))
    os.replace(tmp, path)
