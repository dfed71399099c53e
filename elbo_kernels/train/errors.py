"""Errors a user can act on, and the exit code of ``elbo-kernels train`` for each class.

    0    the run finished
    1    a bug: anything not below (the command prints the traceback and asks for a report)
    2    usage: a bad flag or config value, an unknown key, a missing file, an output directory
         that holds another run
    3    resume: the checkpoint does not match the config, or no checkpoint verifies
    4    storage: the output directory cannot be written (read-only, permissions, disk full)
    5    the reward function failed (RewardError)
    6    non-finite values stopped the run (NonFiniteError)
    7    the model weights are not available (ModelNotAvailableError)
    75   stopped by SIGTERM, SIGINT or SIGUSR1 (Preempted): a verified checkpoint was written; run
         the same command with --resume auto to continue (preemption.py)
    130  interrupted: a second signal while stopping, or Ctrl-C before training started

The classes below subclass ValueError / OSError, so code that catches those keeps working.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Optional, Tuple

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_RESUME = 3
EXIT_STORAGE = 4
EXIT_REWARD = 5
EXIT_NON_FINITE = 6
EXIT_MODEL = 7
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: a temporary stop, to be continued
EXIT_INTERRUPTED = 130

# How a message names a config key: "--resume" on the command line (cli.py switches it on),
# "resume=True" from Python, where a flag means nothing to the reader.
_COMMAND_LINE = [False]


def set_command_line(on: bool) -> None:
    """Messages name config keys as command-line flags (``on``) or as Python arguments."""
    _COMMAND_LINE[0] = bool(on)


def option(key: str, value=True) -> str:
    """``--key`` / ``--key VALUE`` on the command line, ``key=VALUE`` from Python (``key=...`` when
    ``value`` is None: a value of the user's choice)."""
    if _COMMAND_LINE[0]:
        return f"--{key}" + ("" if value is True else " ..." if value is None else f" {value}")
    return f"{key}=" + ("..." if value is None else repr(value))


# errno values that mean "no room": a full disk, a quota, a file-size limit.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# errno values that mean "not allowed to write here".
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class RunWarning(UserWarning):
    """Something the user should know that does not stop the run (the command line prints it on one line)."""


class ConfigError(ValueError):
    """A config value, key or file is wrong; the message names the key, the value and what is allowed."""

    exit_code = EXIT_USAGE


class OutputDirError(ValueError):
    """The output directory holds another run's files (and neither resume nor overwrite was given)."""

    exit_code = EXIT_USAGE


class ResumeError(ValueError):
    """resume cannot continue: the checkpoint's config differs, or no checkpoint verifies."""

    exit_code = EXIT_RESUME


class NonFiniteError(RuntimeError):
    """A non-finite value with on_non_finite "raise", or max_consecutive_skips skipped updates in a row."""

    exit_code = EXIT_NON_FINITE


class RewardError(RuntimeError):
    """The reward function raised, or did not return one score per image (the run stops: never a silent drop)."""

    exit_code = EXIT_REWARD


class Preempted(Exception):
    """The run stopped on a signal after writing a verified checkpoint (not an error: continue it with
    --resume auto). The message says which signal, which checkpoint, and how long the stop took."""

    exit_code = EXIT_PREEMPTED


class StorageError(OSError):
    """Writing the run's outputs failed for lack of space or permission; names the path (and free space)."""

    exit_code = EXIT_STORAGE


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"  # unreachable


def free_space(path) -> Optional[int]:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent), or None."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def storage_cause(error: BaseException) -> Optional[int]:
    """The errno of a no-space or not-writable failure anywhere in ``error``'s chain, else None.

    Writers outside Python's io (safetensors' Rust writer, torch's zip writer) do not raise
    OSError; their messages carry the OS error text, which is matched instead.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "errno", None)
        if code in NO_SPACE + NOT_WRITABLE:
            return code
        text = str(error)
        if "No space left on device" in text or "os error 28" in text:
            return errno.ENOSPC
        if "Read-only file system" in text or "os error 30" in text:
            return errno.EROFS
        error = error.__cause__ or error.__context__
    return None


def storage_error(error: BaseException, path, what: str = "write", next_step: str = "") -> StorageError:
    """A StorageError naming ``path`` (the file that failed when ``what`` is "write"), why, and (for
    lack of space) the free space left there."""
    code = storage_cause(error) or errno.EIO
    if what == "write":
        path = getattr(error, "filename", None) or path
    if code in NO_SPACE:
        free = free_space(path)
        room = f"{human_bytes(free)} free on that filesystem" if free is not None else "free space unknown"
        reason = {errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large (a file-size limit)"}.get(
            code, "no space left on device")
        message = f"cannot {what} {path}: {reason} ({room}); {next_step or 'free some space, then run again'}"
    else:
        import os

        message = f"cannot {what} {path}: {os.strerror(code)}; choose a writable {option('output_dir', None)}"
    result = StorageError(code, message)
    result.filename = str(path)
    return result


def classify(error: BaseException) -> Tuple[int, Optional[str]]:
    """(exit code, one-line message) for an error the user can act on; (EXIT_BUG, None) for a bug."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code, _one_line(error)
    if type(error).__name__ == "ModelNotAvailableError":
        return EXIT_MODEL, _one_line(error)
    if isinstance(error, OSError) and error.filename is not None:
        if storage_cause(error) is not None:
            return EXIT_STORAGE, _one_line(storage_error(error, error.filename))
        if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            return EXIT_USAGE, f"{error.strerror}: {error.filename}"
    if isinstance(error, OSError) and storage_cause(error) is not None:
        return EXIT_STORAGE, _one_line(storage_error(error, "the output directory"))
    return EXIT_BUG, None


def _one_line(error: BaseException) -> str:
    text = str(error.args[1] if isinstance(error, OSError) and len(error.args) > 1 else error)
    return " ".join(text.split())
