"""Wan 2.1 / 2.2 text-to-video through diffusers' WanPipeline: the FlowModelAdapter for video.

- Latents are 5-D: [16, (frames - 1) / 4 + 1, H / 8, W / 8] per video (the Wan VAE compresses
  4x in time, keeping the first frame). The fused ELBO, KL and SDE-step ops see any latent
  shape as a flat [rows, D] view, so the recipe is unchanged; ``frames`` is a config value.
- The transformer takes timesteps in 0..1000 (t * num_train_timesteps) and the UMT5 prompt
  embedding as ``encoder_hidden_states``; there is no pooled embedding. Wan 2.2's TI2V-5B
  (``expand_timesteps``) takes one timestep per latent token, the same t everywhere for text-to-video.
- The sampler shift is the scheduler's static ``flow_shift`` (3.0 for 480p, 5.0 for 720p in
  the Wan releases), which is SD3's shift formula.
- ``decode`` returns videos [N, 3, frames, H, W] in [0, 1]; the trainer scores them frame by
  frame with the image reward and averages (elbo_kernels.rewards.video), and draws sample
  grids as frame strips.

Wan 2.2 A14B, with its second, low-noise expert (``transformer_2`` and ``boundary_ratio``), is
refused with a ValueError: LoRA on two experts switched by the noise level is not supported yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .pipelines import (PipelineAdapter, check_latents, check_resolution, check_velocity_inputs, tiny_t5_tokenizer,
                        vae_latent_stats)

DEFAULT_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
"""q, k, v and output projections of every block's self-attention (attn1) and text cross-attention (attn2)."""

RECOMMENDED_LORA = {"rank": 32, "alpha": 64.0}

DEFAULT_FRAMES = 81
"""WanPipeline's default ``num_frames``."""


class WanModel(PipelineAdapter):
    """FlowModelAdapter over a diffusers WanPipeline (text-to-video).

    Attributes:
        latent_shape: (16, latent frames, H / 8, W / 8).
        frames: video frames decoded per sample (4k + 1).
        sampler_shift: the scheduler's flow_shift.
    """

    recommended_lora = dict(RECOMMENDED_LORA)

    def __init__(self, pipeline, *, resolution: Optional[int] = None, frames: Optional[int] = None,
                 max_sequence_length: int = 512, prompt_cache_size: int = 256, decode_batch_size: int = 2,
                 gradient_checkpointing: bool = False):
        """Wrap a loaded WanPipeline. Raises ValueError for a two-expert pipeline (Wan 2.2 A14B), frames not
        4k + 1, or a resolution off the patch grid."""
        if getattr(pipeline, "transformer_2", None) is not None or pipeline.config.get("boundary_ratio") is not None:
            raise ValueError("this WanPipeline has two experts (transformer_2 / boundary_ratio, Wan 2.2 A14B); "
                             "only single-transformer Wan (2.1 T2V, 2.2 TI2V-5B) is supported")
        super().__init__(pipeline, prompt_cache_size=prompt_cache_size, gradient_checkpointing=gradient_checkpointing)
        self.lora_target_modules: List[str] = list(LORA_TARGET_MODULES)
        temporal, spatial = pipeline.vae_scale_factor_temporal, pipeline.vae_scale_factor_spatial
        frames = DEFAULT_FRAMES if frames is None else frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % temporal:
            raise ValueError(f"frames must be an int {temporal}k + 1 (the VAE compresses {temporal}x in time after "
                             f"the first frame), got {frames!r}")
        patch = pipeline.transformer.config.patch_size
        resolution = 480 if resolution is None else resolution  # square, at Wan 2.1's 480p tier
        self.resolution = check_resolution(resolution, spatial * patch[1])
        self.frames = frames
        size = resolution // spatial
        self.latent_shape: Tuple[int, ...] = (pipeline.transformer.config.in_channels, (frames - 1) // temporal + 1,
                                              size, size)
        self.max_sequence_length = max_sequence_length
        self.decode_batch_size = decode_batch_size

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, *, device="cpu", weights_dtype=None, vae_dtype=torch.float32,
             resolution: Optional[int] = None, frames: Optional[int] = None, max_sequence_length: int = 512,
             gradient_checkpointing: bool = False, **kwargs) -> "WanModel":
        """Load from a hub id or a local folder; the transformer starts frozen (the trainer adds LoRA).

        Raises ModelNotAvailableError (OSError) when the weights cannot be found, ValueError for bad options.
        """
        return cls._load("WanPipeline", source, device=device, weights_dtype=weights_dtype, vae_dtype=vae_dtype,
                         pipeline_kwargs=kwargs, resolution=resolution, frames=frames,
                         max_sequence_length=max_sequence_length, gradient_checkpointing=gradient_checkpointing)

    @property
    def sampler_shift(self) -> float:
        return float(self.pipeline.scheduler.config.get("flow_shift", None) or 1.0)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipeline.scheduler.config.num_train_timesteps)

    def _encode(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        hidden, _ = self.pipeline.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                                max_sequence_length=self.max_sequence_length, device=self.device)
        return {"encoder_hidden_states": hidden}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        """v_theta on video latents x [N, *latent_shape], t [N] in (0, 1]; returns x's shape and dtype."""
        hidden = cond["encoder_hidden_states"]
        t = check_velocity_inputs(x, t, hidden.shape[0], self.latent_shape)
        dtype = self.weights_dtype
        timestep = t.float() * self.num_train_timesteps
        if self.pipeline.config.get("expand_timesteps", False):
            _, f, h, w = self.latent_shape
            patch = self.transformer.config.patch_size
            timestep = timestep[:, None].expand(-1, (f // patch[0]) * (h // patch[1]) * (w // patch[2]))
        v = self.transformer(hidden_states=x.to(dtype), timestep=timestep.to(dtype),
                             encoder_hidden_states=hidden.to(dtype), return_dict=False)[0]
        return v.to(x.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Videos [N, 3, frames, resolution, resolution] float32 in [0, 1]."""
        check_latents(latents, self.latent_shape)
        vae = self.pipeline.vae
        mean, std = vae_latent_stats(vae)
        videos = []
        for chunk in latents.split(self.decode_batch_size):
            z = chunk.to(device=vae.device, dtype=vae.dtype) * std + mean
            videos.append((vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(videos)


def save_tiny_pipeline(directory, *, seed: int = 0, max_length: int = 16) -> Path:
    """Write a tiny random WanPipeline (``save_pretrained`` layout) with Wan 2.1's classes.

    WanTransformer3DModel (one block), AutoencoderKLWan (8x spatial, 4x temporal compression,
    16 latent channels), UMT5EncoderModel with a locally built T5 tokenizer, and the
    UniPCMultistepScheduler with flow sigmas and flow_shift 3 (Wan 2.1 at 480p). Load it with a small
    ``resolution`` (32 px: 4x4 latents) and ``frames`` (5: 2 latent frames).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_t5_tokenizer(max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = WanPipeline(
            transformer=WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
            ),
            tokenizer=tokenizer,
            text_encoder=UMT5EncoderModel(UMT5Config(
                vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )),
            vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True]),
            scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                              flow_shift=3.0),
        )
    pipeline.save_pretrained(str(directory))
    return directory
