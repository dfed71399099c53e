"""Fault injection: make the trainer die or see NaN at a chosen point, to test that it survives.

Faults are named in the environment variable ``ELBO_KERNELS_FAULT`` (read at each hook, so a
subprocess inherits them) or installed in-process with :func:`inject`. A spec is one or more
faults separated by ";", each ``ACTION:key=value:key=value``:

    kill:phase=checkpoint_write:epoch=3        SIGKILL this process while writing checkpoint 3
    raise:phase=rollout:epoch=2                raise FaultInjected in epoch 2's rollout
    nan:phase=loss:epoch=2;nan:phase=grad:epoch=4
    sigterm:phase=rollout:epoch=2              send this process SIGTERM during epoch 2's rollout

Actions:
    kill    os.kill(os.getpid(), SIGKILL): no cleanup, no flush, exactly like ``kill -9``
    raise   raise :class:`FaultInjected` (an ordinary crash: exceptions unwind, files close)
    nan     replace the first element of the tensor passing the hook with NaN (only at the
            tensor phases below)
    sigterm, sigint, sigusr1
            os.kill(os.getpid(), SIG...): a real signal, as a cluster sends before preemption;
            at the first matching hook only (a second signal would mean "stop now")

Keys (all optional except phase; a fault without ``epoch`` fires at every epoch):
    phase    where (below)
    epoch    1-based epoch, as in metrics.jsonl and checkpoint names (epoch-000003 is written
             after epoch 3)
    process  only on this process index (multi-process runs)

Phases where the trainer calls a hook, in the order of an epoch:

    rollout             first transformer call of the rollout (latents partly sampled)
    rollout_velocity    (nan) the old policy's velocity during the rollout
    reward              (kill) before the reward function; (raise) as if the reward function
                        raised; (nan) its scores
    velocity            (nan) the current policy's velocity in the update
    loss                (nan) a micro-batch loss, before backward
    backward            (kill/raise) after the first micro-batch's backward, before the step
    grad                (nan) the first parameter gradient, before the finiteness check
    optimizer           (kill/raise) after optimizer.step, before the old / EMA blends
    checkpoint_write    the checkpoint's temporary directory holds some files (adapters) but
                        not the optimizer state, the trainer state or the COMPLETE marker
    checkpoint_rename   the temporary directory is complete (COMPLETE written) but not yet
                        renamed into place
    checkpoint_prune    the new checkpoint is in place; older ones are not yet pruned

The hooks cost a dictionary lookup when no fault is set.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch

ENV = "ELBO_KERNELS_FAULT"
SIGNAL_ACTIONS = ("sigterm", "sigint", "sigusr1")
ACTIONS = ("kill", "raise", "nan") + SIGNAL_ACTIONS
PHASES = ("rollout", "rollout_velocity", "reward", "velocity", "loss", "backward", "grad", "optimizer",
          "checkpoint_write", "checkpoint_rename", "checkpoint_prune")
TENSOR_PHASES = ("rollout_velocity", "reward", "velocity", "loss", "grad")


class FaultInjected(RuntimeError):
    """Raised by a ``raise:...`` fault (an injected, ordinary crash)."""


@dataclass(frozen=True)
class Fault:
    action: str
    phase: str
    epoch: Optional[int] = None
    process: Optional[int] = None

    def matches(self, phase: str, epoch: Optional[int], process: int) -> bool:
        return (self.phase == phase and (self.epoch is None or self.epoch == epoch)
                and (self.process is None or self.process == process))

    def spec(self) -> str:
        parts = [self.action, f"phase={self.phase}"]
        parts += [f"epoch={self.epoch}"] if self.epoch is not None else []
        parts += [f"process={self.process}"] if self.process is not None else []
        return ":".join(parts)


def parse(spec: str) -> Tuple[Fault, ...]:
    """Faults from a spec string; ValueError names the bad part and what is allowed."""
    faults: List[Fault] = []
    for text in filter(None, (part.strip() for part in (spec or "").split(";"))):
        action, *pairs = text.split(":")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: fault {text!r} has action {action!r}; allowed: {', '.join(ACTIONS)}")
        values = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or key not in ("phase", "epoch", "process"):
                raise ValueError(f"{ENV}: fault {text!r} has the part {pair!r}; allowed: phase=NAME, epoch=INT, "
                                 f"process=INT")
            values[key] = value
        phase = values.get("phase")
        allowed = TENSOR_PHASES if action == "nan" else tuple(p for p in PHASES if p not in
                                                                 ("rollout_velocity", "velocity", "loss", "grad"))
        if phase not in allowed:
            raise ValueError(f"{ENV}: fault {text!r} has phase {phase!r}; allowed with action {action!r}: "
                             f"{', '.join(allowed)}")
        numbers = {}
        for key in ("epoch", "process"):
            if key in values:
                try:
                    numbers[key] = int(values[key])
                except ValueError:
                    raise ValueError(f"{ENV}: fault {text!r} has {key}={values[key]!r}; allowed: an int") from None
        faults.append(Fault(action, phase, **numbers))
    return tuple(faults)


_installed: Tuple[Fault, ...] = ()
_parsed: Tuple[str, Tuple[Fault, ...]] = ("", ())
_fired: set = set()  # signal faults already sent (each fires once per installation)


def active() -> Tuple[Fault, ...]:
    """The faults in force: those installed with :func:`inject` plus those in $ELBO_KERNELS_FAULT."""
    global _parsed
    spec = os.environ.get(ENV, "")
    if spec != _parsed[0]:
        _parsed = (spec, parse(spec))
        _fired.clear()
    return _installed + _parsed[1]


@contextlib.contextmanager
def inject(spec: str) -> Iterator[Tuple[Fault, ...]]:
    """Install the faults of ``spec`` for the duration of the block (in this process only)."""
    global _installed
    faults = parse(spec)
    previous = _installed
    _installed = previous + faults
    _fired.clear()
    try:
        yield faults
    finally:
        _installed = previous


def point(phase: str, epoch: Optional[int], process: int = 0) -> None:
    """Hook: die (kill), raise or send a signal here if a fault names this phase and epoch."""
    for fault in active():
        if fault.action in SIGNAL_ACTIONS and fault.matches(phase, epoch, process) and fault not in _fired:
            _fired.add(fault)
            os.kill(os.getpid(), getattr(signal, fault.action.upper()))
        elif fault.action in ("kill", "raise") and fault.matches(phase, epoch, process):
            if fault.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise FaultInjected(f"injected fault {fault.spec()}")


def corrupt(phase: str, epoch: Optional[int], value: torch.Tensor, process: int = 0) -> torch.Tensor:
    """Hook: ``value`` with its first element replaced by NaN if a nan fault names this phase and epoch.

    Returns a new tensor (the input is not modified); for floating tensors only.
    """
    for fault in active():
        if fault.action == "nan" and fault.matches(phase, epoch, process):
            poisoned = value.clone(memory_format=torch.contiguous_format)
            poisoned.view(-1)[0] = float("nan")
            return poisoned
    return value
