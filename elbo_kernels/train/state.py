"""Saving and restoring a trainer's complete state (see checkpoint.py for the layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..models.lora import load_adapter, save_adapter
from .checkpoint import latest_checkpoint, rng_state, set_rng_state, write_checkpoint, write_json


def _adapter_names(trainer):
    return ("default", "old") + (("ema",) if trainer.config.ema_decay > 0 else ())


def _check_finite(trainer) -> None:
    for name, p in trainer.transformer.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise RuntimeError(f"refusing to checkpoint: parameter {name} holds non-finite values")


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
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        write_json(tmp / "trainer_state.json", {
            "epoch": trainer.epoch,
            "step": trainer.step,
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
    trainer.transformer_rows = state["transformer_rows"]
    trainer.history = state["history"]
    trainer.tracker.load_state_dict(state["tracker"])
    trainer.output.resume(state["history"], state["before"], path)
    return True
