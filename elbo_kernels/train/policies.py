"""The trainer's policies on one transformer: current (trained), old, EMA and reference.

With LoRA (lora_rank > 0) they are adapters of the same transformer: "default" (trained),
"old", "ema" and (with anchor_beta > 0) "anchor", with the reference = adapters disabled.
With lora_rank = 0 the whole transformer is trained and frozen copies play the others.
``policy(which)`` runs a block as one of them; ``_blend`` moves them towards the current policy:

    old    <- d old + (1 - d) current,     d = min(old_decay_rate * step, old_decay_max)
    ema    <- e ema + (1 - e) current
    anchor <- a anchor + (1 - a) current,  a = min(anchor_decay_rate * step, anchor_decay_max)  (AWM)
"""

from __future__ import annotations

import contextlib
import copy
from typing import Dict

import torch

from ..models.lora import active_adapter, add_lora, blend_adapters
from .sharding import shard


def adapter_names(cfg) -> tuple:
    """The policies a config keeps besides the reference: trained first, then the blended ones."""
    return ("default", "old") + (("ema",) if cfg.ema_decay > 0 else ()) + (("anchor",) if cfg.anchor_beta > 0 else ())


class PolicySet:
    """Mixin of :class:`~elbo_kernels.train.trainer.Trainer`: builds and switches its policies.

    Uses the trainer's config, model, accelerator, device and ``sharded``; sets ``copies``,
    ``parameters``, ``optimizer`` and ``transformer``.
    """

    def _setup_policies(self) -> None:
        cfg = self.config
        transformer = self.model.transformer
        transformer.requires_grad_(False)
        self.copies: Dict[str, torch.nn.Module] = {}
        names = adapter_names(cfg)
        if cfg.lora_rank > 0:
            add_lora(transformer, self.model.lora_target_modules, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                     adapter_names=names, init_seed=cfg.seed)
        else:
            # Copied before sharding: each copy is sharded on its own and never reaches the optimizer.
            self.copies = {"reference": copy.deepcopy(transformer).requires_grad_(False)}
            for name in names[1:]:
                self.copies[name] = copy.deepcopy(transformer).requires_grad_(False)
        if self.sharded:
            for module in (transformer, *self.copies.values()):
                shard(module, self.device.type)
        # Parameters are listed after sharding: fully_shard replaces them with sharded ones.
        if cfg.lora_rank > 0:
            params = [p for n, p in transformer.named_parameters() if ".default." in n and "lora_" in n]
            for p in params:
                p.requires_grad_(True)
        else:
            transformer.requires_grad_(True)
            params = list(transformer.parameters())
        self.parameters = params
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if self.sharded:  # accelerate's prepare would add DDP on CPU processes (sharding.py)
            self.transformer = transformer
            return
        wrapped, self.optimizer = self.accelerator.prepare(transformer, self.optimizer)
        self.model.transformer = wrapped
        self.transformer = self.accelerator.unwrap_model(wrapped)

    @contextlib.contextmanager
    def policy(self, which: str):
        """Run the block as policy ``which``: "current", "old", "ema", "anchor" or "reference"."""
        outer, self._policy_name = self._policy_name, which
        try:
            if which == "current":
                yield
            elif self.config.lora_rank > 0:
                adapter = {"old": "old", "ema": "ema", "anchor": "anchor", "reference": None}[which]
                with active_adapter(self.transformer, adapter):
                    yield
            else:
                trained = self.model.transformer
                self.model.transformer = self.copies[which]
                try:
                    yield
                finally:
                    self.model.transformer = trained
        finally:
            self._policy_name = outer

    def evaluation_policy(self) -> str:
        return "ema" if self.config.ema_decay > 0 else "current"

    @torch.no_grad()
    def update_old_and_ema(self) -> None:
        """old <- d old + (1 - d) current, ema <- e ema + (1 - e) current and, with anchor_beta > 0,
        anchor <- a anchor + (1 - a) current (once per epoch)."""
        cfg = self.config
        self._blend("old", min(cfg.old_decay_rate * self.step, cfg.old_decay_max))
        if cfg.ema_decay > 0:
            self._blend("ema", cfg.ema_decay)
        if cfg.anchor_beta > 0:
            self._blend("anchor", min(cfg.anchor_decay_rate * self.step, cfg.anchor_decay_max))

    def _blend(self, target: str, decay: float) -> None:
        if self.config.lora_rank > 0:
            blend_adapters(self.transformer, target=target, source="default", decay=decay)
            return
        for p_target, p_source in zip(self.copies[target].parameters(), self.transformer.parameters()):
            p_target.mul_(decay).add_(p_source.detach(), alpha=1 - decay)
