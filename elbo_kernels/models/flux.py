"""FLUX.1 through diffusers' FluxPipeline: the FlowModelAdapter for FLUX.1-dev (and -schnell).

What differs from SD3, and how this adapter handles it:

- Latents are *packed*: the VAE's [16, H/8, W/8] latent is cut into 2x2 patches, each a
  64-channel token, so the transformer sees [(H/16)*(W/16), 64] tokens. The trainer works
  in that packed space (``latent_shape = (tokens, 64)``): the ELBO, the KL and the SDE
  step are elementwise means over the latent, and packing is a permutation, so they are
  the same numbers as on the unpacked latent. ``decode`` unpacks before the VAE.
- FLUX.1-dev is guidance-distilled: it takes a guidance strength as an embedded input
  (``guidance``, the pipeline's default 3.5) instead of classifier-free guidance. Rollouts
  and the loss both call the transformer once with that embedding; keep the trainer's
  ``guidance_scale`` at 1 (no CFG), as the pipeline does.
- The timestep grid is shifted by a resolution-dependent amount: diffusers computes
  ``mu = calculate_shift(image_seq_len, ...)`` from the scheduler's config and warps
  sigma -> exp(mu) / (exp(mu) + 1/sigma - 1), which is SD3's shift formula with
  shift = exp(mu); ``sampler_shift`` returns that value for the configured resolution.
- The transformer takes t in [0, 1] (the pipeline divides its 0..1000 timesteps by 1000),
  plus text and image position ids for its rotary embedding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .pipelines import (PipelineAdapter, check_latents, check_resolution, check_velocity_inputs, tiny_clip_tokenizer,
                        tiny_t5_tokenizer)

DEFAULT_MODEL = "black-forest-labs/FLUX.1-dev"

LORA_TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
]
"""Attention projections of the double-stream blocks (and q, k, v of the single-stream ones, which share
the names): the same targets as SD3, which FLUX's MMDiT blocks mirror."""

RECOMMENDED_LORA = {"rank": 32, "alpha": 64.0}

DEFAULT_GUIDANCE = 3.5
"""FluxPipeline's default ``guidance_scale`` for the guidance embedding of FLUX.1-dev."""


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, (H/2)*(W/2), 4C]: each 2x2 patch becomes one token, channels-major within it
    (the layout of FluxPipeline._pack_latents). Raises ValueError for odd H or W."""
    n, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latents must have even height and width to pack 2x2 patches, got {tuple(latents.shape)}")
    return latents.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), 4 * c)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack`: [N, (height/2)*(width/2), 4C] -> [N, C, height, width] (latent pixels)."""
    n, length, channels = tokens.shape
    if length != (height // 2) * (width // 2) or channels % 4:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not pack a {height}x{width} latent")
    return tokens.reshape(n, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5) \
        .reshape(n, channels // 4, height, width)


def image_position_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[(height/2)*(width/2), 3] rotary position ids of the packed tokens: (0, row, column)."""
    rows, columns = height // 2, width // 2
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] += torch.arange(rows)[:, None]
    ids[..., 2] += torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3).to(device=device, dtype=dtype)


def resolution_shift(image_seq_len: int, scheduler_config) -> float:
    """exp(mu) with FLUX's linear mu(image_seq_len) between (base_image_seq_len, base_shift) and
    (max_image_seq_len, max_shift), read from the scheduler config (diffusers' defaults when absent).
    Returns the scheduler's static ``shift`` when it does not use dynamic shifting."""
    get = scheduler_config.get if hasattr(scheduler_config, "get") else (lambda k, d: getattr(scheduler_config, k, d))
    if not get("use_dynamic_shifting", False):
        return float(get("shift", 1.0))
    base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
    base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return math.exp(base_shift + slope * (image_seq_len - base_len))


class FluxModel(PipelineAdapter):
    """FlowModelAdapter over a diffusers FluxPipeline.

    Attributes:
        latent_shape: (tokens, 64) packed; tokens = (resolution / 16)^2 for the real VAE.
        latent_size: (H, W) of the unpacked VAE latent.
        guidance: the embedded guidance strength (None for models without a guidance embedding).
        sampler_shift: exp(mu) for this resolution (see the module docstring).
    """

    recommended_lora = dict(RECOMMENDED_LORA)

    def __init__(self, pipeline, *, resolution: Optional[int] = None, guidance: Optional[float] = None,
                 max_sequence_length: int = 512, prompt_cache_size: int = 256, decode_batch_size: int = 8,
                 gradient_checkpointing: bool = False):
        """Wrap a loaded FluxPipeline. Raises ValueError for a resolution off the 2x2-patch grid, a guidance
        value for a model without a guidance embedding, or a non-positive guidance."""
        super().__init__(pipeline, prompt_cache_size=prompt_cache_size, gradient_checkpointing=gradient_checkpointing)
        self.lora_target_modules: List[str] = list(LORA_TARGET_MODULES)
        factor = pipeline.vae_scale_factor * 2
        if resolution is None:
            # 512 px (FlowGRPO's FLUX setting), or the VAE's native size when smaller (the tiny test model).
            resolution = min(512, int(getattr(pipeline.vae.config, "sample_size", 512)))
        self.resolution = check_resolution(resolution, factor)
        size = resolution // pipeline.vae_scale_factor
        self.latent_size: Tuple[int, int] = (size, size)
        self.latent_shape: Tuple[int, ...] = ((size // 2) ** 2, pipeline.transformer.config.in_channels)
        embeds_guidance = bool(pipeline.transformer.config.guidance_embeds)
        if guidance is not None and not embeds_guidance:
            raise ValueError(f"guidance={guidance!r} was given but this FLUX transformer has no guidance embedding "
                             f"(FLUX.1-schnell); leave guidance unset")
        if guidance is not None and not (isinstance(guidance, (int, float)) and guidance > 0):
            raise ValueError(f"guidance must be a number > 0, got {guidance!r}")
        self.guidance = (DEFAULT_GUIDANCE if guidance is None else float(guidance)) if embeds_guidance else None
        self.max_sequence_length = max_sequence_length
        self.decode_batch_size = decode_batch_size
        self._image_ids = image_position_ids(size, size)

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, *, device="cpu", weights_dtype=None, vae_dtype=torch.float32,
             resolution: Optional[int] = None, guidance: Optional[float] = None, max_sequence_length: int = 512,
             gradient_checkpointing: bool = False, **kwargs) -> "FluxModel":
        """Load from a hub id or a local folder; the transformer starts frozen (the trainer adds LoRA).

        Raises ModelNotAvailableError (OSError) when the weights cannot be found, ValueError for bad options.
        """
        return cls._load("FluxPipeline", source, device=device, weights_dtype=weights_dtype, vae_dtype=vae_dtype,
                         pipeline_kwargs=kwargs, resolution=resolution, guidance=guidance,
                         max_sequence_length=max_sequence_length, gradient_checkpointing=gradient_checkpointing)

    @property
    def sampler_shift(self) -> float:
        return resolution_shift(self.latent_shape[0], self.pipeline.scheduler.config)

    def _encode(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        hidden, pooled, _ = self.pipeline.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                        max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        """v_theta on packed latents x [N, tokens, 64], t [N] in (0, 1]; returns [N, tokens, 64] in x's dtype."""
        hidden, pooled = cond["encoder_hidden_states"], cond["pooled_projections"]
        t = check_velocity_inputs(x, t, hidden.shape[0], self.latent_shape)
        dtype = self.weights_dtype
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((x.shape[0],), self.guidance, device=x.device, dtype=torch.float32)
        v = self.transformer(
            hidden_states=x.to(dtype), timestep=t.to(dtype), guidance=guidance,
            pooled_projections=pooled.to(dtype), encoder_hidden_states=hidden.to(dtype),
            txt_ids=torch.zeros(hidden.shape[1], 3, device=x.device, dtype=dtype),
            img_ids=self._image_ids.to(x.device, dtype), return_dict=False,
        )[0]
        return v.to(x.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, resolution, resolution] float32 in [0, 1] from packed latents [N, *latent_shape]."""
        check_latents(latents, self.latent_shape)
        vae = self.pipeline.vae
        images = []
        for chunk in latents.split(self.decode_batch_size):
            z = unpack(chunk, *self.latent_size).to(device=vae.device, dtype=vae.dtype)
            z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            images.append((vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)


def save_tiny_pipeline(directory, *, seed: int = 0, resolution: int = 32, max_length: int = 16,
                       guidance_embeds: bool = True) -> Path:
    """Write a tiny random FluxPipeline (``save_pretrained`` layout) with FLUX.1-dev's classes and schedule.

    FluxTransformer2DModel (one double- and one single-stream block, guidance embedding), a
    16-channel AutoencoderKL with FLUX's scaling and shift factors and a 2x downsampling, CLIP-L's
    and T5's model classes with locally built tokenizers, and FLUX.1-dev's dynamically shifted
    FlowMatchEulerDiscreteScheduler. Latents are 16 x resolution/2 squared, packed into
    (resolution/4)^2 tokens of 64.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clip_tokenizer = tiny_clip_tokenizer(max_length)
    t5_tokenizer = tiny_t5_tokenizer(max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = FluxPipeline(
            transformer=FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
            ),
            scheduler=FlowMatchEulerDiscreteScheduler(
                shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                max_image_seq_len=4096,
            ),
            vae=AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                latent_channels=16, norm_num_groups=4, sample_size=resolution, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
            ),
            text_encoder=CLIPTextModel(CLIPTextConfig(
                vocab_size=len(clip_tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=max_length, projection_dim=8,
                bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.pad_token_id,
            )),
            tokenizer=clip_tokenizer,
            text_encoder_2=T5EncoderModel(T5Config(
                vocab_size=len(t5_tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                decoder_start_token_id=0, pad_token_id=t5_tokenizer.pad_token_id,
                eos_token_id=t5_tokenizer.eos_token_id,
            )),
            tokenizer_2=t5_tokenizer,
        )
    pipeline.save_pretrained(str(directory))
    return directory
