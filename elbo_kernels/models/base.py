"""What the trainer needs from a flow model: the adapter protocol every model implements.

A model adapter wraps a diffusers transformer (the SD3 class for both the
embedded DigitEval model and SD3.5) with its prompt encoder and decoder. The
trainer, the samplers and the rewards only talk to this protocol, so the same
loop runs the 283k-parameter digits model on a laptop and SD3.5-M on GPUs.

Conventions: flow time t in (0, 1], t = 1 is pure noise (SD3); the model
predicts the velocity v = eps - x0; latents are [N, *latent_shape].
"""

from __future__ import annotations

from typing import Dict, List, Protocol, Sequence, Tuple, runtime_checkable

import torch

Conditioning = Dict[str, torch.Tensor]


@runtime_checkable
class FlowModelAdapter(Protocol):
    transformer: torch.nn.Module
    """The module LoRA adapters are added to (a diffusers SD3Transformer2DModel)."""

    latent_shape: Tuple[int, ...]
    """Shape of one latent, e.g. (1, 8, 8) for digits, (16, 64, 64) for SD3.5-M at 512 px."""

    lora_target_modules: List[str]
    """Module names for peft's LoraConfig(target_modules=...)."""

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Batch-first conditioning tensors for the transformer (cached per prompt).

        Keys: "encoder_hidden_states" [N, L, C] and "pooled_projections" [N, P].
        The empty prompt "" is the unconditional input for classifier-free guidance.
        """

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """v_theta(x_t, t, prompt): x [N, *latent_shape], t [N] in (0, 1]; returns [N, *latent_shape]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] float in [0, 1] from final latents."""


class PipelineModel:
    """The part of an adapter over a diffusers pipeline that does not depend on the family.

    ``transformer`` is the pipeline's (assignable: the trainer swaps in an accelerate-wrapped
    module, or frozen copies without LoRA); ``device`` is where its parameters are; ``to``
    moves every component and drops the cached prompt embeddings (``self._cache``).
    Subclasses set ``pipeline`` and ``_cache`` (anything with ``clear()``).
    """

    pipeline = None
    _cache = None

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @transformer.setter
    def transformer(self, module: torch.nn.Module) -> None:
        self.pipeline.transformer = module

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device):
        """Move every component to ``device`` (cached prompt embeddings are dropped); returns self."""
        self.pipeline.to(device)
        self._cache.clear()
        return self
