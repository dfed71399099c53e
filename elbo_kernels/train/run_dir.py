"""The default output directory: one per task, and one per run.

``output_dir`` none (the default) means ``outputs/<task>`` for the embedded model ("digiteval",
"digit_geneval") and ``outputs/<model folder name>`` otherwise; when that directory already holds
a run, a new run takes the first free ``outputs/<name>-2``, ``-3``, ... and says so, so that the
README's commands run in any order and a command run twice keeps both runs. With ``resume`` the
default is the newest of them (the run to continue), with ``overwrite`` the first (replaced).
An ``output_dir`` given by the user is used as it is (and refused when it holds another run).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import List

from . import resume_notes
from .errors import option
from .lock import RunLock
from .outputs import RUN_FILES, claim_output_dir
from .state import check_same_run

ROOT = Path("outputs")


def base_name(config) -> str:
    """The directory name of a run's default output directory (without the per-run suffix)."""
    if config.model == "digits":
        return config.task
    name = Path(str(config.model).rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run"


def holds_run(directory: Path) -> bool:
    return any((directory / name).exists() or (directory / name).is_symlink() for name in RUN_FILES)


def numbered(base: Path) -> List[Path]:
    """``base`` and its existing ``base-N`` siblings that hold a run, in run order (N ascending)."""
    found = {1: base} if holds_run(base) else {}
    if base.parent.is_dir():
        for entry in base.parent.iterdir():
            match = re.fullmatch(re.escape(base.name) + r"-(\d+)", entry.name)
            if match and int(match.group(1)) >= 2 and holds_run(entry):
                found[int(match.group(1))] = entry
    return [found[n] for n in sorted(found)]


def choose(config) -> Path:
    """The directory a run with ``output_dir`` none writes to (module docstring)."""
    base = ROOT / base_name(config)
    runs = numbered(base)
    if config.overwrite or not runs:
        return base
    if config.resume:
        return runs[-1]
    number = 2
    while holds_run(base.with_name(f"{base.name}-{number}")):
        number += 1
    return base.with_name(f"{base.name}-{number}")


def resolve(config, main_process: bool = True, broadcast=None):
    """``config`` with its output_dir set: unchanged when given; else chosen on the main process
    (``broadcast``, when given, sends the choice to the others, so every process writes to one
    directory), with a line saying so when it is not the plain ``outputs/<name>``."""
    if config.output_dir is not None:
        return config
    chosen = str(choose(config)) if main_process else None
    if broadcast is not None:
        chosen = broadcast(chosen)
    plain = str(ROOT / base_name(config))
    if main_process and chosen != plain and not config.resume:
        print(f"{plain} holds an earlier run: this run writes to {chosen} ({option('output_dir', None)} chooses "
              f"the directory, {option('overwrite')} replaces {plain})", flush=True)
    elif main_process and config.resume:
        print(f"output_dir: {chosen}", flush=True)
    return dataclasses.replace(config, output_dir=chosen)


def open_run(config, main_process: bool):
    """The run about to start in ``config.output_dir``: ``(summary, None)`` when resuming a finished
    run (nothing to do and nothing written, not even the lock file, which records its holder;
    resume_notes.py), else ``(None, lock)`` once the directory is claimed for this run
    (outputs.claim_output_dir), the lock held by the main process (lock.py; None elsewhere).
    When resuming, a directory holding another run (config.yaml differs in a key that must match) is
    refused before anything else."""
    root = Path(config.output_dir)
    if config.resume:  # another run's directory is refused before anything, a finished one included
        check_same_run(root, config.to_dict())
    finished = resume_notes.finished_summary(config) if config.resume else None
    if finished is not None:
        return finished, None
    lock = RunLock(root) if main_process else None
    try:
        claim_output_dir(root, resume=config.resume, overwrite=config.overwrite, main_process=main_process)
    except BaseException:
        if lock is not None:  # a refused run leaves the directory as it found it, lock file included
            lock.release()
        raise
    return None, lock
