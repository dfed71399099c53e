"""One process's error ends every process of a run, named, within about a second.

The decision points of an epoch (skips, reward failures) are agreed with a small all-reduce
(trainer.py). Everything else that can go wrong on one process -- an op's ValueError, an
out-of-memory, a NonFiniteError raised on one side, a missing file -- leaves the others waiting
in a collective that never completes: gloo notices the closed connection only when the failed
process has exited (and then reports "Connection closed by peer", not the cause); NCCL waits
for its watchdog timeout, ten minutes by default.

So a failing process first writes its error into the process group's key-value store (the
TCPStore every rank is already connected to), then raises as usual. Every process runs a
daemon thread that polls that key; when another process's error appears, it prints one line
naming the process and the error and exits at once with that error's exit code (os._exit: the
main thread may be blocked inside a collective that will never return).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Optional

from .errors import EXIT_BUG, classify

KEY = "elbo_kernels/failure"
POLL_SECONDS = 0.2


def init_elastic_restart() -> bool:
    """Under ``torchrun --max-restarts``, a restarted group's process group, keyed by its attempt.

    torchrun's agent keeps one key-value store for every attempt, and the default process group
    keys what it exchanges there (gloo's addresses, the start-up barrier) without the attempt:
    a restarted group read the dead group's entries and hung, or failed to connect (torch 2.13,
    reproduced with a bare init_process_group). From the second attempt on, the process group is
    initialised here, before accelerate, on that store under the prefix ``attempt_<n>/`` (which
    also keeps the previous attempt's failure report, KEY, away from this one). Returns whether
    it did; nothing changes for a first attempt, a single process, or other launchers.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if attempt == "0" or world < 2:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    rank = int(os.environ["RANK"])
    hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and rank == 0  # else the agent's
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=world,
                          is_master=hosts_store)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            store=dist.PrefixStore(f"elbo_kernels/attempt_{attempt}/", store),
                            rank=rank, world_size=world)
    return True


def _default_store():
    """The process group's store, or None (single process, or a torch without it)."""
    try:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d

        if not dist.is_available() or not dist.is_initialized():
            return None
        return distributed_c10d._get_default_store()
    except (ImportError, AttributeError, RuntimeError, ValueError):
        return None


def describe(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class FailureChannel:
    """Report this process's error to the others, and stop this process when another reports one."""

    def __init__(self, process_index: int, num_processes: int):
        self.process_index = process_index
        self.store = _default_store() if num_processes > 1 else None
        self._reported = False
        self._closed = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        if self.store is not None:
            watcher = self.store.clone() if hasattr(self.store, "clone") else self.store
            self._watcher = threading.Thread(target=self._watch, args=(watcher,), name="elbo-kernels-failure-watch",
                                             daemon=True)
            self._watcher.start()

    def close(self) -> None:
        """Stop watching (when training ends): a watcher left inside a store call while the interpreter
        shuts down can abort the process ("terminate called without an active exception")."""
        self._closed.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5 * POLL_SECONDS)

    def report(self, error: BaseException) -> None:
        """Record ``error`` as the run's failure (the first process to fail wins)."""
        if self.store is None or self._reported:
            return
        self._reported = True
        code, _ = classify(error)
        value = json.dumps({"process": self.process_index, "error": describe(error), "exit_code": code})
        try:
            # compare_set with an empty expected value sets the key only if it is absent.
            self.store.compare_set(KEY, "", value)
        except Exception:  # noqa: BLE001 - the store may be gone (the launcher tearing down); nothing to tell
            pass

    def failure(self) -> Optional[dict]:
        """Another process's reported failure, or None."""
        if self.store is None:
            return None
        try:
            if not self.store.check([KEY]):
                return None
            found = json.loads(self.store.get(KEY))
        except Exception:  # noqa: BLE001 - an unreachable store says nothing about other processes
            return None
        return found if found.get("process") != self.process_index else None

    def _watch(self, store) -> None:
        while not self._closed.wait(POLL_SECONDS):
            try:
                if not store.check([KEY]):
                    continue
                found = json.loads(store.get(KEY))
            except Exception:  # noqa: BLE001 - the store went away: the launcher is ending the run
                return
            if found.get("process") == self.process_index:
                continue
            sys.stdout.flush()
            print(f"error: process {found['process']} failed: {found['error']} (process {self.process_index} "
                  f"stopped with it)", file=sys.stderr, flush=True)
            os._exit(int(found.get("exit_code") or EXIT_BUG))
