"""What a run leaves behind: metrics.jsonl, experiment trackers (report_to), a progress bar, plots, summary.json."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

from tqdm.auto import tqdm

from .checkpoint import write_json
from .errors import OutputDirError, option

GRID_SEEDS = 8
GRID_ROWS = 10
# What a run writes into its output directory: finding any of these means another run's files are there.
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "curve.png",
             "samples_before.png", "samples_after.png")


def claim_output_dir(root: Path, *, resume: bool, overwrite: bool, main_process: bool = True) -> None:
    """An output directory belongs to one run.

    Without ``resume``, a directory holding another run's files (RUN_FILES) is refused with
    OutputDirError -- mixing two runs' checkpoints once pruned the new run's only checkpoint and
    resumed the old run -- unless ``overwrite``, which deletes those files (only those: anything
    else in the directory is the user's) on the main process. With ``resume`` the directory is
    the run to continue (state.load_state decides what to load).
    """
    if resume:
        return
    found = [name for name in RUN_FILES if (root / name).exists() or (root / name).is_symlink()]
    if not found:
        return
    if not overwrite:
        raise OutputDirError(f"output_dir {root} holds another run ({', '.join(found)}): pass {option('resume')} to "
                             f"continue it, {option('overwrite')} to delete it first, or choose another "
                             f"{option('output_dir', None)}")
    if main_process:
        for name in found:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


class Timer:
    """Seconds per phase of one epoch, as ``seconds_<phase>`` keys."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"seconds_{phase}"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


class RunOutputs:
    def __init__(self, root: Path, config, enabled: bool = True, accelerator=None):
        self.root = root
        self.config = config
        self.enabled = enabled
        self.accelerator = accelerator  # its trackers (report_to) receive the records and pictures
        self.metric = "digiteval"
        self.summary_before: dict = {}
        self.clock_offset = 0.0
        self.checkpoint: Optional[Path] = None
        if enabled:
            root.mkdir(parents=True, exist_ok=True)
            config.save_yaml(root / "config.yaml")
            if self._tracking():
                from .trackers import WANDB_PROJECT, loggable_config

                accelerator.init_trackers(WANDB_PROJECT, config=loggable_config(config.to_dict()))

    # --- start / resume ---------------------------------------------------------------------------
    def start(self, before: dict, sampler, prompts) -> None:
        self.summary_before = _scalars(before)
        if not self.enabled:
            return
        (self.root / "metrics.jsonl").write_text("")
        if self.config.plots:
            from .plots import sample_grid

            sample_grid(sampler, self.root / "samples_before.png", prompts[:GRID_ROWS], seeds=GRID_SEEDS,
                        title="before training: the base model, no CFG")
            self._log_pictures(["samples_before"], step=0)

    def resume(self, history: list, before: dict, checkpoint: Path) -> None:
        self.summary_before = before
        self.checkpoint = checkpoint
        self.clock_offset = history[-1]["seconds"] if history else 0.0
        if self.enabled:
            # Records after the checkpoint are redone by the resumed run.
            (self.root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))

    # --- per epoch ----------------------------------------------------------------------------------
    def timer(self) -> Timer:
        return Timer()

    def progress(self, total: int, initial: int = 0):
        return tqdm(total=total, initial=initial, desc="train", unit="epoch",
                    disable=not (self.enabled and self.config.progress), dynamic_ncols=True)

    def eval_record(self, result: dict, metric: str) -> dict:
        self.metric = metric
        return {metric if key == "digiteval" else key: value for key, value in _scalars(result).items()}

    def log(self, record: dict, progress) -> None:
        if not self.enabled:
            return
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tracking():
            from .trackers import numeric

            self.accelerator.log(numeric(record), step=record["epoch"])
        postfix = {"reward": f"{record['reward_mean']:.3f}"}
        if self.metric in record:
            postfix[self.metric] = f"{record[self.metric]:.3f}"
            if "diversity" in record:  # absent when not measured (eval_seeds 1)
                postfix["diversity"] = f"{record['diversity']:.2f}"
        progress.set_postfix(postfix)
        progress.update(1)

    def _tracking(self) -> bool:
        return self.enabled and self.accelerator is not None and bool(self.accelerator.log_with)

    def _log_pictures(self, names, step: int) -> None:
        if self._tracking():
            from .trackers import log_pictures

            log_pictures(self.accelerator, {name: self.root / f"{name}.png" for name in names}, step)

    # --- end -----------------------------------------------------------------------------------------
    def finish(self, trainer, before: dict, wall_seconds: float) -> dict:
        history = trainer.history
        metric = self.metric
        evaluated = [r for r in history if metric in r]
        after = evaluated[-1] if evaluated else {}
        reached = next((r for r in evaluated if r[metric] >= 0.9), None)
        phases = ("rollout", "reward", "loss_backward", "optimizer")
        totals = {p: sum(r.get(f"seconds_{p}", 0.0) for r in history) for p in phases}
        summary = {
            "metric": metric,
            f"{metric}_before": before.get("digiteval", before.get(metric)),
            f"{metric}_after": after.get(metric),
            "diversity_before": before.get("diversity"),
            "diversity_after": after.get("diversity"),
            "reward_agreement_before": before.get("reward_agreement"),
            "reward_agreement_after": after.get("reward_agreement"),
            "reward_first": history[0]["reward_mean"] if history else None,
            "reward_last": history[-1]["reward_mean"] if history else None,
            "wall_seconds": wall_seconds,
            "seconds_to_0.9": reached["seconds"] if reached else None,
            "epochs": trainer.epoch,
            "steps": trainer.step,
            "skipped_steps": sum(1 for r in history if r.get("skipped")),
            "training_seconds": totals,
            "transformer_rows": trainer.transformer_rows,
            "final_checkpoint": str(self.checkpoint.resolve()) if self.checkpoint else None,
            "config": self.config.to_dict(),
        }
        if self.enabled:
            if self.config.plots:
                from .plots import learning_curve, sample_grid

                sample_grid(trainer.sample, self.root / "samples_after.png", trainer.task.prompts[:GRID_ROWS],
                            seeds=GRID_SEEDS, title=f"after {trainer.epoch} epochs: the evaluated policy, no CFG")
                learning_curve(history, self.root / "curve.png", metric=metric,
                               before=summary[f"{metric}_before"], diversity_before=summary["diversity_before"])
                self._log_pictures(["samples_after", "curve"], step=trainer.epoch)
            write_json(self.root / "summary.json", summary)
            if self._tracking():
                self.accelerator.end_training()
            print(summary_line(summary, metric))
        return summary


def summary_line(summary: dict, metric: str) -> str:
    """The run's result for a person: rounded numbers, and only the quantities the task measured
    (a task without an evaluation has no metric or diversity to report)."""
    def change(name: str, key: str, digits: int) -> Optional[str]:
        before, after = summary.get(f"{key}_before"), summary.get(f"{key}_after")
        if before is None and after is None:
            return None
        show = lambda x: "n/a" if x is None else f"{x:.{digits}f}"  # noqa: E731
        return f"{name} {show(before)} -> {show(after)}"

    diversity = change("diversity", "diversity", 2)
    if diversity is None and summary.get(f"{metric}_after") is not None:
        diversity = "diversity not measured (it needs eval_seeds >= 2)"
    parts = [change(metric, metric, 3), diversity]
    if summary.get("reward_first") is not None:
        parts.append(f"reward (mean of an epoch's rollouts) {summary['reward_first']:.3f} -> "
                     f"{summary['reward_last']:.3f}")
    spent = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in summary["training_seconds"].items())
    return (", ".join(p for p in parts if p) + f"; wall {summary['wall_seconds']:.1f} s (training: {spent}; the "
            "rest is loading, evaluation, plots and checkpoints)")


def _scalars(result: dict) -> dict:
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
