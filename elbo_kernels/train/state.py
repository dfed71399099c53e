"""Saving and restoring a trainer's complete state (see checkpoint.py for the layout)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..models.lora import load_adapter, save_adapter
from . import faults
from .checkpoint import latest_checkpoint, rng_state, set_rng_state, write_checkpoint, write_json

# Keys that must match between a checkpoint and the run resuming it: anything else would load
# into a differently shaped model, or redraw a different batch, without saying so.
RESUME_MUST_MATCH = ("model", "reward", "seed", "prompts_per_epoch", "group_size", "lora_rank", "lora_alpha",
                     "ema_decay", "estimator", "sampler", "num_steps", "draws_per_sample")
# Keys that change nothing already computed: a resumed run may set them freely.
RESUME_MAY_CHANGE = ("output_dir", "resume", "epochs", "eval_every", "eval_seeds", "stop_at", "checkpoint_every",
                     "keep_checkpoints", "plots", "tensorboard", "report_to", "progress", "on_non_finite",
                     "max_consecutive_skips")


def _adapter_names(trainer):
    return ("default", "old") + (("ema",) if trainer.config.ema_decay > 0 else ())


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


def save_state(trainer, before: dict) -> Optional[Path]:
    """Write a complete checkpoint for the trainer's current epoch; returns its directory."""
    if not trainer.accelerator.is_main_process:
        return None
    _check_finite(trainer)
    cfg = trainer.config

    def write(tmp: Path) -> None:
        if cfg.lora_rank > 0:
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
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
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


def load_state(trainer) -> bool:
    """Restore the last complete checkpoint; False when there is none (a fresh run)."""
    cfg = trainer.config
    path = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
    if path is None:
        return False
    state = json.loads((path / "trainer_state.json").read_text())
    check_resumable(state.get("config", {}), cfg.to_dict(), path)
    if cfg.lora_rank > 0:
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
    trainer.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    trainer.epoch = state["epoch"]
    trainer.step = state["step"]
    trainer.consecutive_skips = state.get("consecutive_skips", 0)
    trainer.transformer_rows = state["transformer_rows"]
    trainer.history = state["history"]
    trainer.tracker.load_state_dict(state["tracker"])
    trainer.output.resume(state["history"], state["before"], path)
    return True


def check_resumable(saved: dict, current: dict, path: Path) -> None:
    """ValueError when the run's config differs from the checkpoint's in a key that must match;
    a warning for other differences (the resumed run is then not the uninterrupted one)."""
    mismatched = [k for k in RESUME_MUST_MATCH if k in saved and saved[k] != current.get(k)]
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r}, now {current.get(k)!r}" for k in mismatched)
        raise ValueError(f"cannot resume from {path}: config key(s) differ ({details}); use the checkpoint's "
                         f"values or a new output_dir")
    changed = [k for k in saved if k not in RESUME_MUST_MATCH + RESUME_MAY_CHANGE and saved[k] != current.get(k)]
    if changed:
        warnings.warn(f"resuming from {path} with changed config key(s) "
                      f"{', '.join(f'{k}: {saved[k]!r} -> {current.get(k)!r}' for k in changed)}; the run will "
                      f"differ from an uninterrupted one", stacklevel=3)
