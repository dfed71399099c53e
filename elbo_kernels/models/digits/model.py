"""The embedded flow model: a tiny SD3 transformer with a learned digit prompt encoder.

:class:`DigitsModel` implements :class:`elbo_kernels.models.base.FlowModelAdapter`
for 8x8 digits. Its transformer is a diffusers ``SD3Transformer2DModel`` (the
class SD3.5 uses) in a 283k-parameter configuration, so LoRA, peft and the
trainer see exactly what they would on SD3.5-M.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .data import NUM_CLASSES, parse_prompt

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
FLOW_WEIGHTS = WEIGHTS_DIR / "digits_flow.safetensors"
FLOW_METADATA = WEIGHTS_DIR / "digits_flow.json"

TRANSFORMER_CONFIG = dict(
    sample_size=8,
    patch_size=2,
    in_channels=1,
    out_channels=1,
    num_layers=2,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=32,
    caption_projection_dim=64,
    pooled_projection_dim=32,
    pos_embed_max_size=4,
)
PROMPT_TOKENS = 4
"""Sequence length L of encoder_hidden_states."""

LORA_TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
]
"""Attention projections of the SD3 joint blocks (the last block has no to_add_out; peft matches the rest)."""

NULL_TOKEN = NUM_CLASSES
"""Token id of the empty prompt "" (unconditional input for classifier-free guidance)."""


class PromptEncoder(nn.Module):
    """Learned embeddings per token (digits 0-9 and the empty prompt) for both SD3 conditioning inputs."""

    def __init__(self, num_tokens: int = PROMPT_TOKENS, hidden_dim: int = 32, pooled_dim: int = 32):
        super().__init__()
        self.num_tokens = num_tokens
        self.hidden_dim = hidden_dim
        self.hidden = nn.Embedding(NUM_CLASSES + 1, num_tokens * hidden_dim)
        self.pooled = nn.Embedding(NUM_CLASSES + 1, pooled_dim)

    def forward(self, token_ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """token_ids int64 [N] -> {"encoder_hidden_states": [N, L, C], "pooled_projections": [N, P]}."""
        n = token_ids.shape[0]
        return {
            "encoder_hidden_states": self.hidden(token_ids).reshape(n, self.num_tokens, self.hidden_dim),
            "pooled_projections": self.pooled(token_ids),
        }


def token_ids(prompts: Sequence[str]) -> torch.Tensor:
    """int64 [N]: the digit each prompt names, NULL_TOKEN for ""."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, got a single str (wrap it in a list)")
    ids = [parse_prompt(p) for p in prompts]
    return torch.tensor([NULL_TOKEN if i is None else i for i in ids], dtype=torch.int64)


def build_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**TRANSFORMER_CONFIG)


class DigitsModel(nn.Module):
    """Flow model adapter for the embedded digits (FlowModelAdapter protocol).

    Attributes:
        transformer: diffusers SD3Transformer2DModel (LoRA goes here).
        prompt_encoder: :class:`PromptEncoder` (frozen after :meth:`load`).
        latent_shape: (1, 8, 8).
        lora_target_modules: attention projection names for peft.
    """

    latent_shape: Tuple[int, ...] = (1, 8, 8)

    def __init__(self, transformer: Optional[nn.Module] = None, prompt_encoder: Optional[PromptEncoder] = None):
        super().__init__()
        self.transformer = transformer if transformer is not None else build_transformer()
        self.prompt_encoder = prompt_encoder if prompt_encoder is not None else PromptEncoder(
            hidden_dim=TRANSFORMER_CONFIG["joint_attention_dim"],
            pooled_dim=TRANSFORMER_CONFIG["pooled_projection_dim"],
        )
        self.lora_target_modules: List[str] = list(LORA_TARGET_MODULES)
        self._cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @classmethod
    def load(cls, device="cpu", weights: Optional[str] = None) -> "DigitsModel":
        """The shipped pretrained model (or ``weights``, a safetensors file from pretrain), in eval mode.

        The prompt encoder is frozen; the transformer keeps requires_grad=True so LoRA can be added.

        Raises:
            FileNotFoundError: the weights file is missing (run ``python -m elbo_kernels.models.digits.pretrain``).
        """
        from safetensors.torch import load_file

        path = Path(weights) if weights is not None else FLOW_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"digits flow weights not found at {path}; run `python -m elbo_kernels.models.digits.pretrain`"
            )
        model = cls()
        model.load_state_dict(load_file(str(path)))
        model.prompt_encoder.requires_grad_(False)
        return model.to(device).eval()

    @staticmethod
    def metadata() -> dict:
        """The shipped model's json record (config, training settings, measured DigitEval)."""
        return json.loads(FLOW_METADATA.read_text())

    def _apply(self, fn, *args, **kwargs):
        # Cached conditioning lives on the old device/dtype: drop it whenever the module moves.
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def encode_prompts(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Conditioning for a batch of prompts (see the protocol); "" is unconditional.

        Results are cached per prompt while the prompt encoder is frozen; when its
        parameters require grad (pretraining) they are recomputed with autograd.

        Returns:
            {"encoder_hidden_states": [N, 4, 32], "pooled_projections": [N, 32]} on the model's device.
        Raises:
            TypeError / ValueError: prompts is a bare str, or a prompt does not name one digit.
        """
        ids = token_ids(prompts)
        device = self.device
        if any(p.requires_grad for p in self.prompt_encoder.parameters()):
            return self.prompt_encoder(ids.to(device))
        missing = [i for i in set(ids.tolist()) if i not in self._cache]
        if missing:
            with torch.no_grad():
                out = self.prompt_encoder(torch.tensor(missing, device=device))
            for row, i in enumerate(missing):
                self._cache[i] = (out["encoder_hidden_states"][row], out["pooled_projections"][row])
        hidden = torch.stack([self._cache[i][0] for i in ids.tolist()])
        pooled = torch.stack([self._cache[i][1] for i in ids.tolist()])
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        """v_theta(x_t, t, prompt). x [N, 1, 8, 8]; t [N] (or a scalar) in (0, 1]; returns [N, 1, 8, 8]."""
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or [N] = [{x.shape[0]}], got shape {tuple(t.shape)}")
        hidden = cond["encoder_hidden_states"]
        pooled = cond["pooled_projections"]
        if hidden.shape[0] != x.shape[0] or pooled.shape[0] != x.shape[0]:
            raise ValueError(
                f"cond batch ({hidden.shape[0]}, {pooled.shape[0]}) must match x's batch {x.shape[0]}"
            )
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=hidden.to(x.dtype),
            pooled_projections=pooled.to(x.dtype),
            timestep=t * 1000,
            return_dict=False,
        )[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 1, 8, 8] float in [0, 1]: (latent + 1) / 2, clamped."""
        return ((latents.float() + 1) / 2).clamp(0, 1)
