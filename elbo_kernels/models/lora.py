"""LoRA adapters for the policies the trainer keeps on one transformer, through peft.

The trainer holds three named adapters on the same base weights:

    "default"   the policy being trained (pi_theta)
    "old"       the behaviour policy that made the rollouts (pi_old), a soft copy of "default"
    "ema"       an exponential moving average of "default", used for evaluation

and the reference model pi_ref is the base with all adapters disabled.
Checkpoints use peft's format: ``adapter_model.safetensors`` holding
``get_peft_model_state_dict`` under PeftModel's key prefix and ``adapter_config.json`` (a LoraConfig), so
``LoraConfig.from_pretrained`` + ``set_peft_model_state_dict`` (or diffusers'
``load_lora_adapter``) load them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def add_lora(
    transformer: torch.nn.Module,
    target_modules: Sequence[str],
    *,
    rank: int,
    alpha: float,
    adapter_names: Sequence[str] = ("default",),
    init_seed: int = 0,
) -> None:
    """Add LoRA adapters; every adapter after the first starts as an exact copy of the first."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights="gaussian")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        with warnings.catch_warnings():
            # peft warns that a second adapter is being added: that is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            for name in adapter_names:
                transformer.add_adapter(config, adapter_name=name)
    # Adapters train in fp32 even over bf16 / fp16 base weights (peft casts activations to them).
    for name, p in transformer.named_parameters():
        if "lora_" in name and p.dtype != torch.float32:
            p.data = p.data.float()
    for name in adapter_names[1:]:
        blend_adapters(transformer, target=name, source=adapter_names[0], decay=0.0)
    transformer.set_adapter(adapter_names[0])


def adapter_parameters(transformer: torch.nn.Module, adapter_name: str) -> dict:
    """Map a name common to all adapters (the adapter name removed) -> that adapter's parameter."""
    tag = f".{adapter_name}."
    return {name.replace(tag, "."): p for name, p in transformer.named_parameters() if tag in name and "lora_" in name}


@torch.no_grad()
def blend_adapters(transformer: torch.nn.Module, *, target: str, source: str, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter."""
    targets = adapter_parameters(transformer, target)
    sources = adapter_parameters(transformer, source)
    if targets.keys() != sources.keys():
        raise ValueError(f"adapters {target!r} and {source!r} do not have the same parameters")
    for name, p in targets.items():
        p.mul_(decay).add_(sources[name].to(p.dtype), alpha=1 - decay)


@contextlib.contextmanager
def active_adapter(transformer: torch.nn.Module, name) -> Iterator[None]:
    """Run the block with adapter ``name`` active (None: adapters disabled = the reference model).

    peft's set_adapter also flips requires_grad to the active adapter; the trained adapter's
    flags are restored on exit so the optimizer keeps seeing its parameters as trainable.
    """
    trained = transformer.active_adapters()[0] if hasattr(transformer, "active_adapters") else "default"
    flags = {n: p.requires_grad for n, p in transformer.named_parameters()}
    try:
        if name is None:
            transformer.disable_adapters()
        else:
            transformer.set_adapter(name)
        yield
    finally:
        if name is None:
            transformer.enable_adapters()
        transformer.set_adapter(trained)
        for n, p in transformer.named_parameters():
            p.requires_grad_(flags[n])


def save_adapter(transformer: torch.nn.Module, adapter_name: str, directory: os.PathLike, state=None) -> Path:
    """Write peft's adapter files for ``adapter_name`` into ``directory`` (created).

    ``state``: the adapter's weights under peft's names, when they were gathered elsewhere (a sharded
    transformer's state dict holds shards, see train/sharding.py); else read from ``transformer``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    # Keys as PeftModel.save_pretrained writes them, so PeftModel.from_pretrained loads them too.
    state = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(directory / ADAPTER_WEIGHTS))
    transformer.peft_config[adapter_name].save_pretrained(str(directory))
    return directory


def load_adapter(transformer: torch.nn.Module, directory: os.PathLike, adapter_name: str = "default") -> None:
    """Load an adapter written by :func:`save_adapter` (adding it if absent) and make it active.

    Raises FileNotFoundError naming the missing file.
    """
    directory = Path(directory)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"adapter checkpoint {directory} has no {name}")
    config = LoraConfig.from_pretrained(str(directory))
    if adapter_name not in getattr(transformer, "peft_config", {}):
        transformer.add_adapter(config, adapter_name=adapter_name)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(directory / ADAPTER_WEIGHTS)).items()}
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter checkpoint {directory} has weights this model lacks: {unexpected[:3]}...")
    transformer.set_adapter(adapter_name)
