"""Qwen-Image through diffusers' QwenImagePipeline: the FlowModelAdapter.

- Latents are packed 2x2 tokens like FLUX.1 ([(H/16)*(W/16), 64]; the trainer works in that
  space, see elbo_kernels.models.flux); the VAE is Wan's 3-D causal VAE used on one frame, so
  ``decode`` unpacks to [N, 16, 1, H/8, W/8], undoes the per-channel latent normalisation and
  keeps the single frame.
- The prompt goes through Qwen2.5-VL inside Qwen-Image's chat template; the template's first
  34 tokens are dropped (as the pipeline does) and each prompt keeps only its own tokens. Cached
  per prompt; a batch is zero-padded to its longest prompt with a mask, which the transformer
  applies in attention.
- The transformer takes t in [0, 1] and the latent grid (``img_shapes``) for its rotary embedding.
  Qwen-Image has no guidance embedding: with guidance_scale 1 the trainer runs without CFG, as
  the study's recipe does (the pipeline's true CFG would be guidance_scale > 1).
- The timestep grid is shifted by resolution like FLUX.1 (exp(mu), from the scheduler config).
  The released scheduler also sets ``shift_terminal`` (the last sigma stretched to 0.02); the
  trainer's grid ends at 0 instead and does not apply it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .flux import pack, resolution_shift, unpack
from .pipelines import (PipelineAdapter, check_latents, check_resolution, check_velocity_inputs, tiny_qwen_tokenizer,
                        vae_latent_stats)

DEFAULT_MODEL = "Qwen/Qwen-Image"

LORA_TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
]
"""Image- and text-stream attention projections of the dual-stream blocks (the MMDiT names, as in SD3)."""

RECOMMENDED_LORA = {"rank": 32, "alpha": 64.0}

__all__ = ["QwenImageModel", "save_tiny_pipeline", "pack", "unpack"]


class QwenImageModel(PipelineAdapter):
    """FlowModelAdapter over a diffusers QwenImagePipeline.

    Attributes:
        latent_shape: (tokens, 64) packed.
        latent_size: (H, W) of the unpacked VAE latent.
        sampler_shift: exp(mu) for this resolution.
    """

    recommended_lora = dict(RECOMMENDED_LORA)

    def __init__(self, pipeline, *, resolution: Optional[int] = None, max_sequence_length: int = 512,
                 prompt_cache_size: int = 256, decode_batch_size: int = 8, gradient_checkpointing: bool = False):
        """Wrap a loaded QwenImagePipeline. Raises ValueError for a resolution off the 2x2-patch grid."""
        super().__init__(pipeline, prompt_cache_size=prompt_cache_size, gradient_checkpointing=gradient_checkpointing)
        self.lora_target_modules: List[str] = list(LORA_TARGET_MODULES)
        # 512 px by default: this library's SD3.5 / FLUX.1 setting (Qwen-Image's native size is larger).
        resolution = 512 if resolution is None else resolution
        self.resolution = check_resolution(resolution, pipeline.vae_scale_factor * 2)
        size = resolution // pipeline.vae_scale_factor
        self.latent_size: Tuple[int, int] = (size, size)
        self.latent_shape: Tuple[int, ...] = ((size // 2) ** 2, pipeline.transformer.config.in_channels)
        self.max_sequence_length = max_sequence_length
        self.decode_batch_size = decode_batch_size

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, *, device="cpu", weights_dtype=None, vae_dtype=torch.float32,
             resolution: Optional[int] = None, max_sequence_length: int = 512, gradient_checkpointing: bool = False,
             **kwargs) -> "QwenImageModel":
        """Load from a hub id or a local folder; the transformer starts frozen (the trainer adds LoRA).

        Raises ModelNotAvailableError (OSError) when the weights cannot be found, ValueError for bad options.
        """
        return cls._load("QwenImagePipeline", source, device=device, weights_dtype=weights_dtype, vae_dtype=vae_dtype,
                         pipeline_kwargs=kwargs, resolution=resolution, max_sequence_length=max_sequence_length,
                         gradient_checkpointing=gradient_checkpointing)

    @property
    def sampler_shift(self) -> float:
        return resolution_shift(self.latent_shape[0], self.pipeline.scheduler.config)

    def _encode(self, prompts: List[str]) -> Dict[str, list]:
        hidden, mask = self.pipeline.encode_prompt(prompt=prompts, device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        lengths = mask.sum(1).tolist()
        # Each prompt keeps its own tokens, so a cached prompt does not depend on the batch it was encoded in.
        return {"encoder_hidden_states": [h[:n] for h, n in zip(hidden, lengths)],
                "encoder_hidden_states_mask": [m[:n] for m, n in zip(mask, lengths)]}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        """v_theta on packed latents x [N, tokens, 64], t [N] in (0, 1]; returns [N, tokens, 64] in x's dtype."""
        hidden, mask = cond["encoder_hidden_states"], cond["encoder_hidden_states_mask"]
        t = check_velocity_inputs(x, t, hidden.shape[0], self.latent_shape)
        dtype = self.weights_dtype
        rows, columns = self.latent_size[0] // 2, self.latent_size[1] // 2
        v = self.transformer(
            hidden_states=x.to(dtype), timestep=t.to(dtype), encoder_hidden_states=hidden.to(dtype),
            encoder_hidden_states_mask=mask, img_shapes=[[(1, rows, columns)]] * x.shape[0], return_dict=False,
        )[0]
        return v.to(x.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, resolution, resolution] float32 in [0, 1] from packed latents [N, *latent_shape]."""
        check_latents(latents, self.latent_shape)
        vae = self.pipeline.vae
        mean, std = vae_latent_stats(vae)
        images = []
        for chunk in latents.split(self.decode_batch_size):
            z = unpack(chunk, *self.latent_size).unsqueeze(2).to(device=vae.device, dtype=vae.dtype) * std + mean
            images.append((vae.decode(z, return_dict=False)[0][:, :, 0].float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)


def save_tiny_pipeline(directory, *, seed: int = 0) -> Path:
    """Write a tiny random QwenImagePipeline (``save_pretrained`` layout) with Qwen-Image's classes.

    QwenImageTransformer2DModel (one block), AutoencoderKLQwenImage (8x spatial), a two-layer
    Qwen2_5_VLForConditionalGeneration with a locally built byte-level Qwen2 tokenizer, and a
    dynamically shifted FlowMatchEulerDiscreteScheduler with Qwen-Image's exponential time shift.
    Load it with a small ``resolution`` (32 px: 4x4 latents, 4 packed tokens).
    """
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocab = len(tokenizer)
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                             bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                             rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                               fullatt_block_indexes=[0]),
            image_token_id=vocab - 1, video_token_id=vocab - 1, vision_start_token_id=vocab - 1,
            vision_end_token_id=vocab - 1,
        ))
        pipeline = QwenImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(
                shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
                max_image_seq_len=8192, time_shift_type="exponential",
            ),
            vae=AutoencoderKLQwenImage(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                       temperal_downsample=[False, True, True]),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=QwenImageTransformer2DModel(
                patch_size=2, in_channels=64, out_channels=16, num_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 6, 6),
            ),
        )
    pipeline.save_pretrained(str(directory))
    return directory
