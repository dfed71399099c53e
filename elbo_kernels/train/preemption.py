"""Stopping on a signal with a verified checkpoint: SLURM and Kubernetes preemption, Ctrl-C.

A cluster that takes a job's GPUs back sends SIGTERM (SLURM: or the signal chosen with
``--signal``, e.g. SIGUSR1) some seconds before SIGKILL. During ``Trainer.fit`` the first
SIGTERM, SIGINT or SIGUSR1 only records the request; the trainer acts on it at the next stop
point, the same on every process (one small all-reduce, as for skips):

    epoch start, each transformer call of the rollout, after the reward, before each
    micro-batch's backward   -> the epoch is abandoned: nothing of it is kept (no optimizer step
                                was taken; the transformer-row count, the RNG states and the
                                advantage tracker are put back as they were at its start)
    after the optimizer step -> the epoch is finished (its record, its evaluation if due)

Then the trainer writes a checkpoint of that state (unless the newest one already holds it),
verifies its hashes, and raises :class:`~.errors.Preempted`; the command line prints one line
and exits with code 75 (errors.py). The same command with ``--resume auto`` continues from it,
and the resumed run equals an uninterrupted one bitwise.

Bound, signal to exit: the longest stretch between stop points -- one rollout transformer call,
the reward of one epoch's batch, one micro-batch's forward and backward, or the rest of an epoch
after its optimizer step (its evaluation when one is due) -- plus one checkpoint write and
verification. A second signal while stopping raises KeyboardInterrupt at once (exit 130; the
previous complete checkpoint is intact, writes being atomic). Signals before ``fit`` starts
(loading the model, building kernels) keep their default behaviour.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from typing import Optional

from .checkpoint import latest_checkpoint, rng_state
from .errors import Preempted

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class StopRequest:
    """The first stop signal received while installed (``signum``, ``received_at`` on the monotonic clock)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.received_at: Optional[float] = None
        self._previous: dict = {}

    def install(self) -> None:
        """Handle SIGNALS (main thread only: elsewhere Python cannot install handlers, and nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"a second signal ({signal.Signals(signum).name}) while stopping")
        self.signum, self.received_at = signum, time.monotonic()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal on another process"


class Abandon(Exception):
    """Internal: leave the epoch in progress (raised at a stop point, caught by the loop)."""


class Preemption:
    """Mixin of :class:`~elbo_kernels.train.trainer.Trainer`: stop points, epoch snapshots, the final checkpoint."""

    def _stop_agreed(self) -> bool:
        """True on every process when a stop signal reached any of them (one all-reduce with several)."""
        return self._agree(self.stop_request.signum is not None)

    def _stop_point(self) -> None:
        """Abandon the epoch here if a stop was requested -- unless it already took an optimizer step."""
        if not self._stepped_this_epoch and self._stop_agreed():
            raise Abandon()

    def _epoch_snapshot(self) -> dict:
        """What an abandoned epoch must put back: counters and RNG states (its samples are keyed, not drawn)."""
        self._stepped_this_epoch = False
        return {"transformer_rows": self.transformer_rows, "rng": rng_state(),
                "tracker": copy.deepcopy(self.tracker.state_dict()), "skips": self.consecutive_skips}

    def _restore(self, snapshot: dict) -> None:
        self.transformer_rows = snapshot["transformer_rows"]
        self.tracker.load_state_dict(snapshot["tracker"])
        self.consecutive_skips = snapshot["skips"]
        self.optimizer.zero_grad(set_to_none=True)
        self._phase = None

    def _preempt(self, before: dict, progress, snapshot: Optional[dict] = None):
        """Write (or reuse) a verified checkpoint of the current state, then raise Preempted."""
        from .._checksums import verify
        from .state import save_state

        progress.close()
        if snapshot is not None:
            self._restore(snapshot)
        root = self.output.root / "checkpoints"
        newest = latest_checkpoint(root) if self.accelerator.is_main_process else None
        # The main process decides (only it lists the directory); every process follows, since a
        # sharded save is collective.
        reused = self._agree(newest is not None and newest.name == f"epoch-{self.epoch:06d}")
        path = newest if reused else save_state(self, before, rng=snapshot["rng"] if snapshot else None)
        self.accelerator.wait_for_everyone()
        if path is not None:
            verify(path)  # raises CorruptCheckpointError if what was written does not read back
        request = self.stop_request
        waited = "" if request.received_at is None else f", {time.monotonic() - request.received_at:.1f} s after " \
                                                        f"the signal"
        where = "abandoned epoch " + str(self.epoch + 1) if snapshot is not None else f"after epoch {self.epoch}"
        raise Preempted(f"stopped by {request.name} ({where}): checkpoint {path or 'on the main process'} "
                        f"{'already held this state' if reused else 'written'} and verified{waited}; run the same "
                        f"command with --resume auto to continue")

