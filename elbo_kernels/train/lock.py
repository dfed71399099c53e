"""One writer per output directory: an advisory lock file, ``OUTPUT_DIR/.lock``.

Two jobs started on one directory (an array job, a second terminal, a requeue while the old job
still runs) would both write checkpoints and metrics into it. The main process of a run takes an
exclusive ``flock`` on ``.lock`` before it writes anything, and records in it who holds it
(host, pid, start time, command). A second process that finds it taken stops at once with
OutputDirError (exit 2), one line naming the holder; the first is not disturbed.

Stale locks: the kernel releases a flock when its holder dies, however it dies (SIGKILL, a
crashed node's NFS lease expiring), so a dead holder never blocks a new run; when the file still
names a holder that did not release it cleanly, the new run says so in one line and takes over.
On filesystems without flock (ENOLCK, EOPNOTSUPP), the record decides: a holder on this host whose
pid is gone is stale; a holder on another host is trusted (delete ``.lock`` when that job is gone).

The lock is re-entrant within one process (two Trainers of one Python session, as tests make),
and released when ``fit`` ends or the process exits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, Optional

from .errors import OutputDirError, RunWarning

LOCK_FILE = ".lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
_held: Dict[str, list] = {}  # resolved lock path -> [file descriptor, holders in this process]


def _record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300]}


def _read(fd: int) -> Optional[dict]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", "replace")
        value = json.loads(text) if text.strip() else None
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "another process (it recorded nothing)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists under another user, or unreadable: assume alive
    return True


class RunLock:
    """This process's hold on ``root/.lock``; :meth:`release` once (later calls do nothing)."""

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE
        self.key = str(self.path.resolve())
        self._released = False
        if self.key in _held:
            _held[self.key][1] += 1
            return
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            previous = self._take(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_record()) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        _held[self.key] = [fd, 1]
        if previous:
            warnings.warn(f"output_dir {root}: the previous writer, {_describe(previous)}, ended without releasing "
                          f"{self.path}; it is gone, so this run takes the directory over", RunWarning, stacklevel=3)

    def _take(self, fd: int) -> Optional[dict]:
        """Lock ``fd``; the stale record left by a dead holder (or None); OutputDirError when it is held."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(f"output_dir {self.path.parent} is in use by {_describe(_read(fd))}: one run writes "
                                 f"a directory at a time; wait for it to end, stop it, or choose another "
                                 f"--output_dir") from None
        except OSError as error:
            if error.errno not in _NO_FLOCK:
                raise
            holder = _read(fd)  # no flock here: the record decides
            if holder and (holder.get("host") != socket.gethostname() or _alive(holder.get("pid"))):
                raise OutputDirError(f"output_dir {self.path.parent} is in use by {_describe(holder)} (this "
                                     f"filesystem has no flock; delete {self.path} if that job is gone)") from None
        return _read(fd)

    def release(self) -> None:
        if self._released or self.key not in _held:
            return
        self._released = True
        entry = _held[self.key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[self.key]
        try:
            os.ftruncate(entry[0], 0)  # an empty file: released cleanly (not a stale holder)
        except OSError:
            pass
        os.close(entry[0])  # closing the descriptor releases the flock
