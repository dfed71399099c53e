"""The DigitGenEval flow model: the tiny SD3 transformer on 3 x 16 x 16 canvases with a learned prompt encoder.

:class:`DigitGenEvalModel` is a :class:`~elbo_kernels.models.digits.DigitsModel` (the same
FlowModelAdapter code: velocity, decode, caching, LoRA targets) with a wider canvas (patch
size 4, so 16 image tokens) and :class:`CompositionEncoder`, a one-layer transformer over the
prompt's words (:func:`~elbo_kernels.models.digit_geneval.prompts.tokenize`), so that "a red 3
left of a blue 8" and "a blue 3 left of a red 8" get different conditioning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..digits.model import LORA_TARGET_MODULES, DigitsModel
from .prompts import MAX_TOKENS, PAD, VOCABULARY, tokenize

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "digit_geneval"
FLOW_WEIGHTS = WEIGHTS_DIR / "flow.safetensors"
FLOW_METADATA = WEIGHTS_DIR / "flow.json"

TRANSFORMER_CONFIG = dict(
    sample_size=16,
    patch_size=4,
    in_channels=3,
    out_channels=3,
    num_layers=3,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=32,
    caption_projection_dim=64,
    pooled_projection_dim=32,
    pos_embed_max_size=4,
)


class CompositionEncoder(nn.Module):
    """Word embeddings + positions, one transformer encoder layer; pooled = projected mean over words.

    forward(token ids int64 [N, L]) -> {"encoder_hidden_states": [N, L, C], "pooled_projections": [N, P]}.
    """

    def __init__(self, hidden_dim: int = 32, pooled_dim: int = 32, num_tokens: int = MAX_TOKENS):
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), hidden_dim)
        self.position = nn.Parameter(torch.zeros(num_tokens, hidden_dim))
        self.layer = nn.TransformerEncoderLayer(hidden_dim, nhead=2, dim_feedforward=2 * hidden_dim, dropout=0.0,
                                                batch_first=True)
        self.pooled = nn.Linear(hidden_dim, pooled_dim)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, token_ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        padding = token_ids == PAD
        hidden = self.layer(self.embedding(token_ids) + self.position, src_key_padding_mask=padding)
        hidden = hidden.masked_fill(padding[..., None], 0.0)
        keep = (~padding).sum(1, keepdim=True).clamp_min(1).to(hidden.dtype)
        return {"encoder_hidden_states": hidden, "pooled_projections": self.pooled(hidden.sum(1) / keep)}


def build_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**TRANSFORMER_CONFIG)


class DigitGenEvalModel(DigitsModel):
    """Flow model adapter for DigitGenEval canvases (FlowModelAdapter protocol).

    Attributes:
        transformer: diffusers SD3Transformer2DModel (LoRA goes here).
        prompt_encoder: :class:`CompositionEncoder` (frozen after :meth:`load`).
        latent_shape: (3, 16, 16).
    """

    latent_shape: Tuple[int, ...] = (3, 16, 16)

    def __init__(self, transformer: Optional[nn.Module] = None, prompt_encoder: Optional[nn.Module] = None):
        super().__init__(
            transformer if transformer is not None else build_transformer(),
            prompt_encoder if prompt_encoder is not None else CompositionEncoder(
                TRANSFORMER_CONFIG["joint_attention_dim"], TRANSFORMER_CONFIG["pooled_projection_dim"]),
        )
        self.lora_target_modules = list(LORA_TARGET_MODULES)

    @classmethod
    def load(cls, device="cpu", weights: Optional[str] = None) -> "DigitGenEvalModel":
        """The shipped pretrained model (or ``weights`` from pretrain), eval mode, prompt encoder frozen.

        Raises:
            FileNotFoundError: weights missing (run ``python -m elbo_kernels.models.digit_geneval.pretrain``).
        """
        from safetensors.torch import load_file

        path = Path(weights) if weights is not None else FLOW_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"DigitGenEval flow weights not found at {path}; run "
                                    "`python -m elbo_kernels.models.digit_geneval.pretrain`")
        model = cls()
        model.load_state_dict(load_file(str(path)))
        model.prompt_encoder.requires_grad_(False)
        return model.to(device).eval()

    @staticmethod
    def metadata() -> dict:
        """The shipped model's json record (config, training settings, measured scores)."""
        return json.loads(FLOW_METADATA.read_text())

    def encode_prompts(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Conditioning for a batch of prompts; "" is unconditional. Cached per prompt while frozen.

        Returns:
            {"encoder_hidden_states": [N, 8, 32], "pooled_projections": [N, 32]} on the model's device.
        Raises:
            TypeError / ValueError: a bare str, or a prompt that is not a DigitGenEval prompt.
        """
        ids = tokenize(prompts)
        device = self.device
        if any(p.requires_grad for p in self.prompt_encoder.parameters()):
            return self.prompt_encoder(ids.to(device))
        keys = [tuple(row) for row in ids.tolist()]
        missing = sorted(set(k for k in keys if k not in self._cache))
        if missing:
            with torch.no_grad():
                out = self.prompt_encoder(torch.tensor(missing, device=device))
            for row, key in enumerate(missing):
                self._cache[key] = (out["encoder_hidden_states"][row], out["pooled_projections"][row])
        hidden = torch.stack([self._cache[k][0] for k in keys])
        pooled = torch.stack([self._cache[k][1] for k in keys])
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}
