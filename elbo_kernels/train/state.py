"""Saving and restoring a trainer's complete state (see checkpoint.py for the layout)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Optional

import torch
from safetensors.torch import load_file, save_file

from .._checksums import CorruptCheckpointError, verify
from .._safe_load import UnsafePickleError, load_checkpoint_file
from ..models.lora import ADAPTER_WEIGHTS, PEFT_PREFIX, load_adapter, save_adapter
from .policies import adapter_names
from . import faults, sharding
from .checkpoint import (checkpoint_dirs, quarantine, rng_state, save_torch, set_rng_state, tidy, write_checkpoint,
                         write_json)
from .errors import ResumeError, RunWarning, option


class CheckpointWarning(RunWarning):
    """A checkpoint failed verification and was set aside; resume fell back to an older one."""

# Keys that must match between a checkpoint and the run resuming it: anything else would load
# into a differently shaped model, or redraw a different batch, without saying so.
RESUME_MUST_MATCH = ("model", "reward", "seed", "prompts_per_epoch", "group_size", "lora_rank", "lora_alpha",
                     "ema_decay", "estimator", "sampler", "num_steps", "draws_per_sample", "lora_target_modules",
                     "anchor_beta")
# Keys that change nothing already computed: a resumed run may set them freely.
RESUME_MAY_CHANGE = ("output_dir", "resume", "overwrite", "epochs", "eval_every", "eval_seeds", "stop_at",
                     "checkpoint_every", "keep_checkpoints", "plots", "tensorboard", "report_to", "progress",
                     "on_non_finite",
                     "max_consecutive_skips")


def _adapter_names(trainer):
    return adapter_names(trainer.config)


def _check_finite(trainer) -> None:
    """Every tensor a checkpoint would hold must be finite: a NaN is never saved, so never resumed."""
    modules = {"transformer": trainer.transformer}
    modules.update({f"{name} copy": m for name, m in getattr(trainer, "copies", {}).items() if name != "reference"})
    for where, module in modules.items():
        for name, p in module.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise RuntimeError(f"refusing to checkpoint: {where} parameter {name} holds non-finite values")
    for index, state in enumerate(trainer.optimizer.state_dict()["state"].values()):
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise RuntimeError(f"refusing to checkpoint: optimizer state {key!r} of parameter {index} holds "
                                   f"non-finite values")


def _gather(trainer) -> tuple:
    """Sharded runs: full state dicts of the transformer and trained copies, and the optimizer state
    keyed by name, on the main process ({} elsewhere). Collective: every process calls it."""
    modules = {"transformer": trainer.transformer}
    modules.update({f"transformer_{n}": m for n, m in trainer.copies.items() if n != "reference"})
    weights = {name: sharding.full_state(m) for name, m in modules.items()}
    return weights, sharding.gather_optimizer(trainer.transformer, trainer.optimizer)


def _check_gathered(weights: dict, optimizer: dict) -> None:
    for where, state in weights.items():
        for name, value in state.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise RuntimeError(f"refusing to checkpoint: {where} parameter {name} holds non-finite values")
    for name, state in optimizer["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise RuntimeError(f"refusing to checkpoint: optimizer state {key!r} of {name} holds non-finite values")


def save_state(trainer, before: dict, rng: Optional[dict] = None) -> Optional[Path]:
    """Write a complete checkpoint for the trainer's current epoch; returns its directory.

    ``rng``: the RNG states to store (default: the current ones; an abandoned epoch passes those
    of its start, preemption.py).

    Sharded runs (FSDP) gather full state dicts first, on every process, and write the same layout
    (sharding.py says why), with the optimizer state keyed by parameter name."""
    sharded = getattr(trainer, "sharded", False)
    weights, optimizer = _gather(trainer) if sharded else ({}, {})
    if not trainer.accelerator.is_main_process:
        return None
    if sharded:
        _check_gathered(weights, optimizer)
    else:
        _check_finite(trainer)
    cfg = trainer.config

    def write(tmp: Path) -> None:
        if sharded and cfg.lora_rank > 0:
            full = weights["transformer"]
            shipped = "ema" if cfg.ema_decay > 0 else "default"
            save_adapter(trainer.transformer, shipped, tmp, state=sharding.adapter_state(full, shipped))
            for name in _adapter_names(trainer):
                save_adapter(trainer.transformer, name, tmp / "adapters" / name,
                             state=sharding.adapter_state(full, name))
        elif sharded:
            for name, state in weights.items():
                save_file(state, str(tmp / f"{name}.safetensors"))
        elif cfg.lora_rank > 0:
            shipped = "ema" if cfg.ema_decay > 0 else "default"
            save_adapter(trainer.transformer, shipped, tmp)
            for name in _adapter_names(trainer):
                save_adapter(trainer.transformer, name, tmp / "adapters" / name)
        else:
            save_file(_cpu_state(trainer.transformer), str(tmp / "transformer.safetensors"))
            for name, module in trainer.copies.items():
                if name != "reference":
                    save_file(_cpu_state(module), str(tmp / f"transformer_{name}.safetensors"))
        faults.point("checkpoint_write", trainer.epoch)
        if sharded:
            save_torch(optimizer, tmp / sharding.OPTIMIZER_FILE)
        else:
            save_torch(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        save_torch(rng if rng is not None else rng_state(), tmp / "rng.pt")
        write_json(tmp / "trainer_state.json", {
            "epoch": trainer.epoch,
            "step": trainer.step,
            "consecutive_skips": trainer.consecutive_skips,
            "transformer_rows": trainer.transformer_rows,
            "history": trainer.history,
            "before": before,
            "tracker": trainer.tracker.state_dict(),
            "config": cfg.to_dict(),
        })

    return write_checkpoint(Path(cfg.output_dir) / "checkpoints", trainer.epoch, write, cfg.keep_checkpoints)


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def verified_checkpoint(root: Path, main_process: bool = True) -> Optional[Path]:
    """The newest checkpoint under ``root`` whose files match their recorded hashes; None if there is none.

    A checkpoint that fails is never loaded: a CheckpointWarning names it and why, and the main
    process renames it to corrupt-epoch-XXXXXX (kept for inspection, out of pruning's count).
    Raises ResumeError (one line, naming ``root``) when checkpoints exist but none verifies.
    """
    failed: List[str] = []
    for path in reversed(checkpoint_dirs(root)):
        try:
            if not verify(path) and main_process:
                warnings.warn(f"checkpoint {path} was written before content hashes: file sizes checked, contents "
                              f"not", CheckpointWarning, stacklevel=2)
            return path
        except CorruptCheckpointError as error:
            reason = str(error).removeprefix(f"{path}: ")
            failed.append(f"{path.name} ({reason})")
            moved = ""
            if not main_process:
                continue
            try:
                moved = f"; moved aside to {quarantine(path).name}"
            except OSError:
                pass
            warnings.warn(f"checkpoint {path} fails verification: {reason}{moved}; falling back to the previous "
                          f"checkpoint", CheckpointWarning, stacklevel=2)
    if failed:
        raise ResumeError(f"no checkpoint under {root} verifies ({'; '.join(failed)}); nothing was loaded. Restore "
                          f"the files, or start the run again with {option('overwrite')}")
    return None


def load_state(trainer) -> bool:
    """Restore the newest checkpoint that verifies; False when there is none (a fresh run).

    Cleans what a killed run left (temporary directories, checkpoints beyond keep_checkpoints)
    on the main process. Raises ResumeError when checkpoints exist but none verifies, when the
    checkpoint's config differs in a key that must match, or when a verified checkpoint cannot
    be loaded into this model.
    """
    cfg = trainer.config
    root = Path(cfg.output_dir) / "checkpoints"
    main = trainer.accelerator.is_main_process
    path = verified_checkpoint(root, main_process=main)
    if path is None:
        if main:
            tidy(root, cfg.keep_checkpoints)
        return False
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as error:
        raise ResumeError(f"checkpoint {path} verified but its trainer_state.json cannot be read: {error}") from error
    check_resumable(state.get("config", {}), cfg.to_dict(), path)
    try:
        _load_weights(trainer, path)
    except UnsafePickleError as error:
        raise ResumeError(str(error)) from None
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise ResumeError(f"checkpoint {path} verified but does not load into this model "
                          f"({type(error).__name__}: {' '.join(str(error).split())[:300]})") from error
    trainer.epoch = state["epoch"]
    trainer.step = state["step"]
    trainer.consecutive_skips = state.get("consecutive_skips", 0)
    trainer.transformer_rows = state["transformer_rows"]
    trainer.history = state["history"]
    trainer.tracker.load_state_dict(state["tracker"])
    trainer.output.resume(state["history"], state["before"], path)
    if main:
        tidy(root, cfg.keep_checkpoints, protect=path)
    return True


def _load_weights(trainer, path: Path) -> None:
    cfg = trainer.config
    if getattr(trainer, "sharded", False):
        _load_sharded(trainer, path)
    elif cfg.lora_rank > 0:
        for name in _adapter_names(trainer):
            load_adapter(trainer.transformer, path / "adapters" / name, adapter_name=name)
        trainer.transformer.set_adapter("default")
        for p in trainer.parameters:
            p.requires_grad_(True)
    else:
        trainer.transformer.load_state_dict(load_file(str(path / "transformer.safetensors")))
        for name, module in trainer.copies.items():
            if name != "reference":
                module.load_state_dict(load_file(str(path / f"transformer_{name}.safetensors")))
    if not getattr(trainer, "sharded", False):
        if not (path / "optimizer.pt").is_file():
            raise FileNotFoundError(f"checkpoint {path} has no optimizer.pt: it was written by a sharded (FSDP) run; "
                                    f"resume it under the same accelerate FSDP config")
        trainer.optimizer.load_state_dict(load_checkpoint_file(path / "optimizer.pt"))
    set_rng_state(load_checkpoint_file(path / "rng.pt"))


def _load_sharded(trainer, path: Path) -> None:
    """Every process reads the full weights and keeps its shard (sharding.py)."""
    if trainer.config.lora_rank > 0:
        states = {name: {k.removeprefix(PEFT_PREFIX): v for k, v in
                         load_file(str(path / "adapters" / name / ADAPTER_WEIGHTS)).items()}
                  for name in _adapter_names(trainer)}
        sharding.load_adapter_states(trainer.transformer, states)
    else:
        sharding.load_full_state(trainer.transformer, load_file(str(path / "transformer.safetensors")))
        for name, module in trainer.copies.items():
            if name != "reference":
                sharding.load_full_state(module, load_file(str(path / f"transformer_{name}.safetensors")))
    sharding.load_optimizer(trainer.transformer, trainer.optimizer, path / sharding.OPTIMIZER_FILE)


def check_same_run(root: Path, current: dict) -> None:
    """resume 'auto': ResumeError when ``root/config.yaml`` (written at the start of every run) is another
    run's, one whose config differs in a key that must match. Checked before anything is written, so a
    refused directory is left as it was; nothing there (a first submission) passes."""
    import yaml

    path = root / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ResumeError(f"cannot tell whether {root} holds this run: {path} cannot be read "
                          f"({' '.join(str(error).split())[:200]})") from None
    check_resumable(saved if isinstance(saved, dict) else {}, current, path, warn=False)


def check_resumable(saved: dict, current: dict, path: Path, warn: bool = True) -> None:
    """ResumeError (a ValueError) when the run's config differs from the checkpoint's in a key that must match;
    a warning (with ``warn``) for other differences (the resumed run is then not the uninterrupted one)."""
    mismatched = [k for k in RESUME_MUST_MATCH if k in saved and saved[k] != current.get(k)]
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r}, now {current.get(k)!r}" for k in mismatched)
        raise ResumeError(f"cannot resume from {path}: config key(s) differ ({details}); use the checkpoint's "
                          f"values, or a new output_dir")
    changed = [k for k in saved if k not in RESUME_MUST_MATCH + RESUME_MAY_CHANGE and saved[k] != current.get(k)]
    if changed and warn:
        warnings.warn(f"resuming from {path} with changed config key(s) "
                      f"{', '.join(f'{k}: {saved[k]!r} -> {current.get(k)!r}' for k in changed)}; the run will "
                      f"differ from an uninterrupted one", RunWarning, stacklevel=3)
