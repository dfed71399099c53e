"""The trainer's handling of non-finite values (docs/reliability.md): record the first one an
epoch meets, agree on it across processes, and stop after too many skipped epochs.

A non-finite value anywhere in an epoch (rollout, model outputs, rewards, loss, gradients)
skips that epoch's update; every process takes the same decision at the same point (one
small all-reduce), so a multi-process run never deadlocks on a one-sided skip.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import faults
from .errors import NonFiniteError

# Why an epoch's update was skipped, in the order an epoch meets them.
SKIP_REASONS = ("rollout", "model_output", "reward", "loss", "gradients")


class NonFiniteGuard:
    """Mixin of :class:`~elbo_kernels.train.trainer.Trainer`: ``skip_reason`` / ``skip_detail`` of the
    epoch in progress, agreed across the trainer's accelerator processes."""

    def _flag(self, reason: str, detail: str) -> None:
        """Record the first non-finite value this epoch met (the update will be skipped)."""
        if self.skip_reason is None:
            self.skip_reason, self.skip_detail = reason, detail

    def _agreed_reason(self) -> Optional[str]:
        """This epoch's skip reason, the same on every process (the earliest reason any process met)."""
        if self.accelerator.num_processes > 1:
            flags = torch.tensor([float(r == self.skip_reason) for r in SKIP_REASONS], device=self.device)
            flags = self.accelerator.reduce(flags, reduction="max")
            agreed = next((r for r, f in zip(SKIP_REASONS, flags.tolist()) if f), None)
            if agreed is not None and agreed != self.skip_reason:
                self.skip_reason, self.skip_detail = agreed, f"{agreed}: a non-finite value on another process"
        return self.skip_reason

    def _check_gradients(self) -> None:
        """Flag this epoch when the gradients hold a non-finite value (checked unless already flagged)."""
        if self.skip_reason is not None:
            return
        with_grad = [p for p in self.parameters if p.grad is not None]
        if with_grad:
            with_grad[0].grad = faults.corrupt("grad", self._epoch_number, with_grad[0].grad,
                                               self.accelerator.process_index)
        bad = sum(int((~torch.isfinite(p.grad)).sum()) for p in with_grad)
        if bad:
            self._flag("gradients", f"the gradients held {bad} non-finite value(s)")

    def _check_rollout(self, rollout) -> None:
        values = {"final latents": rollout.final}
        if rollout.trajectory is not None:
            values["log-probabilities"] = rollout.trajectory.log_probs
        for name, value in values.items():
            if not bool(torch.isfinite(value).all()):
                self._flag("rollout", f"the rollout's {name} hold {int((~torch.isfinite(value)).sum())} "
                                      f"non-finite value(s)")
                return

    def _stop_if_too_many_skips(self, progress) -> None:
        cfg = self.config
        checkpoint = self.output.checkpoint or "none (the run starts from scratch)"
        if cfg.on_non_finite == "raise":
            progress.close()
            raise NonFiniteError(f"epoch {self.epoch}: {self.skip_detail} (on_non_finite='raise'); no update was "
                                 f"made from this epoch. Last complete checkpoint: {checkpoint}")
        if self.consecutive_skips >= cfg.max_consecutive_skips:
            progress.close()
            reasons = [r.get("skip_reason") for r in self.history[-self.consecutive_skips:]]
            raise NonFiniteError(
                f"{self.consecutive_skips} consecutive epochs skipped (max_consecutive_skips="
                f"{cfg.max_consecutive_skips}), reasons {reasons}; the last: {self.skip_detail}. Lower lr, check "
                f"the reward function and the model, then resume from the last complete checkpoint: {checkpoint}")
