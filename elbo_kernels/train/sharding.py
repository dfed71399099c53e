"""Sharded training (FSDP2: torch.distributed.fsdp.fully_shard), switched on by launching with
``accelerate launch --config_file configs/accelerate/fsdp.yaml``.

The trainer shards the transformer itself rather than through ``accelerator.prepare``, for two reasons:

- accelerate (1.15) enables its FSDP plugin only on accelerators: on CPU processes it silently
  falls back to DDP with the same config. Calling ``fully_shard`` here runs one code path on CPU
  (gloo, where it is tested) and on GPUs (nccl).
- The trainer decides what is sharded and what is trained: each top-level block list
  (``transformer_blocks``, ``single_transformer_blocks``, ``blocks``) block by block, then the
  root; the frozen copies of full fine-tuning (reference, old, ema) are sharded the same way but
  are never given to the optimizer.

Checkpoints gather full state dicts on the main process and keep the unsharded layout
(checkpoint.py): a sharded run's checkpoint loads unsharded (and the shipped adapter loads in
diffusers), and resuming reads the full dicts on every process and keeps each one's shard. The
optimizer state is stored keyed by parameter name (``optimizer_full.pt``). The cost: the main
process holds a full copy of the trained weights and their AdamW moments in host memory while
saving (small for LoRA; about 16 bytes per parameter for full fine-tuning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import torch

OPTIMIZER_FILE = "optimizer_full.pt"
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")


def fsdp_requested() -> bool:
    """True when launched by ``accelerate launch`` with ``distributed_type: FSDP``."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_fsdp_launch(config) -> bool:
    """Whether this run shards; ValueError naming the setting that the sharded path does not support."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ValueError("accelerate config 'distributed_type: DEEPSPEED' is not supported: the trainer's policy "
                         "copies, adapter switching and checkpoints were never run under DeepSpeed ZeRO; use "
                         "configs/accelerate/fsdp.yaml (docs/models.md, Sharded training)")
    if not fsdp_requested():
        return False
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(f"accelerate config key 'fsdp_version' is {version}: the trainer shards with FSDP2 only "
                         f"(fsdp_version: 2, as in configs/accelerate/fsdp.yaml)")
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise ValueError("accelerate config key 'fsdp_offload_params' is true: CPU offload is not supported by the "
                         "trainer's FSDP path")
    if config.mixed_precision == "fp16":
        raise ValueError("config key 'mixed_precision' is 'fp16': under FSDP use 'bf16' or 'no' (the fp16 loss "
                         "scaler is not applied to sharded parameters)")
    if config.plots:
        raise ValueError("config key 'plots' must be false under FSDP: sample grids are drawn on the main process "
                         "only, and a sharded forward needs every process")
    return True


def _reshard_after_forward() -> bool:
    return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "no_shard", "shard_grad_op")


def shard(module: torch.nn.Module, device_type: str) -> torch.nn.Module:
    """Shard ``module`` in place across all processes: its top-level blocks one by one, then the rest."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    reshard = _reshard_after_forward()
    for name in BLOCK_LISTS:
        blocks = getattr(module, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            for block in blocks:
                fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
    return module


def full_state(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU on the main process, {} elsewhere. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_full_state(module: torch.nn.Module, state: Dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a full state dict (present on every process) into a sharded module: each keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    result = set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=strict))
    if strict and (result.missing_keys or result.unexpected_keys):
        raise ValueError(f"state dict does not match the model: missing {result.missing_keys[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}")


def adapter_state(full: Dict[str, torch.Tensor], adapter_name: str) -> Dict[str, torch.Tensor]:
    """An adapter's weights from the model's full state dict, under the names peft's file uses
    (the adapter name removed: ``...to_q.lora_A.default.weight`` -> ``...to_q.lora_A.weight``)."""
    tag = f".{adapter_name}."
    return {k.replace(tag, "."): v for k, v in full.items() if "lora_" in k and tag in k}


def load_adapter_states(module: torch.nn.Module, states: Dict[str, Dict[str, torch.Tensor]]) -> None:
    """Load adapters {name: peft-file weights (prefix removed)} into a sharded module."""
    names = [n for n, _ in module.named_parameters() if "lora_" in n]
    full = {}
    for adapter, state in states.items():
        tag = f".{adapter}."
        wanted = {n.replace(tag, "."): n for n in names if tag in n}
        if wanted.keys() != state.keys():
            raise ValueError(f"adapter {adapter!r} checkpoint holds {len(state)} tensors for the model's "
                             f"{len(wanted)}; different: {sorted(wanted.keys() ^ state.keys())[:3]}")
        full.update({wanted[k]: v for k, v in state.items()})
    load_full_state(module, full, strict=False)


def gather_optimizer(module: torch.nn.Module, optimizer) -> dict:
    """The optimizer state keyed by parameter name, full tensors on CPU on the main process. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer(module: torch.nn.Module, optimizer, path: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path.parent} has no {path.name}: it was written by an unsharded run, "
                                f"whose optimizer state cannot be resumed under FSDP (resume it unsharded)")
    from .._safe_load import load_checkpoint_file

    state = load_checkpoint_file(path)  # weights_only: a checkpoint never runs code (_safe_load.py)
    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
