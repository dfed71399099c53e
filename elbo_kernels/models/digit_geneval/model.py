"""The DigitGenEval flow model: the tiny SD3 transformer in a small linear latent space, with a learned prompt encoder.

:class:`DigitGenEvalModel` is a :class:`~elbo_kernels.models.digits.DigitsModel` (the same
FlowModelAdapter code: velocity, caching, LoRA targets) with

- a latent [48, 2, 2] instead of pixels, as SD3 samples in its VAE's latent space: position
  (row, column) is a slot of the canvas, and its 48 channels are, for each of R, G and B, the
  slot's coordinates on the first 16 singular vectors of the 1,797 grey digits (96% of their
  energy), each divided by its RMS over the digits. The basis and scales are buffers shipped in
  the weights, so :meth:`decode` (latent -> canvas, linear) is fixed and exact to reproduce;
  :func:`encode_canvases` is its inverse on the span. The transformer sees 4 image tokens;
- :class:`CompositionEncoder`, a one-layer transformer over the prompt's words
  (:func:`~elbo_kernels.models.digit_geneval.prompts.tokenize`), so that "a red 3 left of a
  blue 8" and "a blue 3 left of a red 8" get different conditioning.
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

BASIS_SIZE = 16
"""Singular vectors of the grey 8x8 digits kept per colour channel."""
LATENT_SHAPE = (3 * BASIS_SIZE, 2, 2)

TRANSFORMER_CONFIG = dict(
    sample_size=2,
    patch_size=1,
    in_channels=3 * BASIS_SIZE,
    out_channels=3 * BASIS_SIZE,
    num_layers=3,
    attention_head_dim=24,
    num_attention_heads=4,
    joint_attention_dim=32,
    caption_projection_dim=96,
    pooled_projection_dim=32,
    pos_embed_max_size=2,
)


def digit_basis(basis_size: int = BASIS_SIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    """(basis float32 [k, 64], scale float32 [k]): the top-k right singular vectors of the uncentred grey
    digits [1797, 64] (sign fixed so each vector sums to >= 0) and the RMS of the digits' coordinates on them."""
    import numpy as np

    from ..digits.data import load_images

    images, _ = load_images()
    data = torch.from_numpy(np.array(images, dtype=np.float64)).reshape(-1, 64)
    _, _, vh = torch.linalg.svd(data, full_matrices=False)
    basis = vh[:basis_size]
    basis = basis * torch.where(basis.sum(1, keepdim=True) < 0, -1.0, 1.0).to(basis.dtype)
    scale = (data @ basis.T).square().mean(0).sqrt()
    return basis.float(), scale.float()


def encode_canvases(canvases: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Canvases [N, 3, 16, 16] -> latents [N, 3k, 2, 2] (the projection onto the basis; channel = colour * k + j)."""
    n, k = canvases.shape[0], basis.shape[0]
    slot_pixels = canvases.reshape(n, 3, 2, 8, 2, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, 3, 2, 2, 64)
    coords = slot_pixels @ basis.T.to(canvases.dtype) / scale.to(canvases.dtype)  # [n, 3, 2, 2, k]
    return coords.permute(0, 1, 4, 2, 3).reshape(n, 3 * k, 2, 2)


def decode_latents(latents: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Latents [N, 3k, 2, 2] -> canvases [N, 3, 16, 16] (linear, not clamped)."""
    n, k = latents.shape[0], basis.shape[0]
    coords = latents.reshape(n, 3, k, 2, 2).permute(0, 1, 3, 4, 2) * scale.to(latents.dtype)
    slot_pixels = coords @ basis.to(latents.dtype)  # [n, 3, 2, 2, 64]
    return slot_pixels.reshape(n, 3, 2, 2, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(n, 3, 16, 16)


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
        latent_shape: (48, 2, 2) (see the module docstring); :meth:`decode` gives canvases [N, 3, 16, 16].
        basis, scale: buffers [16, 64] and [16] of the fixed linear decoder.
    """

    latent_shape: Tuple[int, ...] = LATENT_SHAPE

    def __init__(self, transformer: Optional[nn.Module] = None, prompt_encoder: Optional[nn.Module] = None):
        super().__init__(
            transformer if transformer is not None else build_transformer(),
            prompt_encoder if prompt_encoder is not None else CompositionEncoder(
                TRANSFORMER_CONFIG["joint_attention_dim"], TRANSFORMER_CONFIG["pooled_projection_dim"]),
        )
        self.lora_target_modules = list(LORA_TARGET_MODULES)
        basis, scale = digit_basis()
        self.register_buffer("basis", basis)
        self.register_buffer("scale", scale)

    def encode(self, canvases: torch.Tensor) -> torch.Tensor:
        """Canvases [N, 3, 16, 16] in [0, 1] -> latents [N, 48, 2, 2] (what the flow model was pretrained on)."""
        if canvases.dim() != 4 or tuple(canvases.shape[1:]) != (3, 16, 16):
            raise ValueError(f"canvases must be [N, 3, 16, 16], got shape {tuple(canvases.shape)}")
        return encode_canvases(canvases.float(), self.basis, self.scale)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Canvases [N, 3, 16, 16] float in [0, 1] from latents [N, 48, 2, 2] (fixed linear decoder, clamped)."""
        return decode_latents(latents.float(), self.basis.float(), self.scale.float()).clamp(0, 1)

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
