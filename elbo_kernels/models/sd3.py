"""Stable Diffusion 3 / 3.5 through diffusers: the FlowModelAdapter the trainer uses on real models.

:class:`SD3Model` wraps a diffusers ``StableDiffusion3Pipeline`` loaded from a hub id
or a local directory (``save_pretrained`` layout):

- prompts go through ``StableDiffusion3Pipeline.encode_prompt`` (CLIP-L, CLIP-G and,
  unless dropped, T5), once per prompt: results are kept in a bounded LRU cache;
- ``velocity(x, t, cond)`` calls the transformer exactly as the pipeline's denoising
  loop does, with ``timestep = t * num_train_timesteps`` (t in (0, 1], so 0..1000);
- ``decode`` undoes the VAE scaling (``latents / scaling_factor + shift_factor``),
  decodes, and maps images from [-1, 1] to [0, 1];
- ``latent_shape`` = (transformer in_channels, resolution / vae_scale_factor, same):
  (16, 64, 64) for SD3.5-M at 512 px.

When weights are neither on disk nor reachable, loading raises
:class:`ModelNotAvailableError` (an ``OSError``) naming the source, the components
that are missing and how to get them.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .base import PipelineModel
from .prompts import DEFAULT_PROMPTS, read_prompts  # noqa: F401 - re-exported (their home until issue 14)

DEFAULT_MODEL = "stabilityai/stable-diffusion-3.5-medium"

LORA_TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
]
"""Attention projections of SD3's joint blocks (FlowGRPO's and the study's LoRA targets)."""

RECOMMENDED_LORA = {"rank": 32, "alpha": 64.0}
"""LoRA r=32, alpha=64: the study's and FlowGRPO's SD3.5-M setting."""

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}

# Which files make a component loadable: a config, plus weights for the neural networks.
_CONFIG_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json", "tokenizer.json",
                 "vocab.json", "spiece.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_NETWORKS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


class ModelNotAvailableError(OSError):
    """The SD3 weights are neither on local disk (or in the Hugging Face cache) nor downloadable."""


def resolve_dtype(dtype: Union[None, str, torch.dtype], name: str = "dtype") -> torch.dtype:
    """"fp32" / "bf16" / "fp16" (or a torch dtype, or None = float32) -> torch.dtype; ValueError names ``name``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"{name} must be one of {sorted(set(DTYPES))} or a torch dtype, got {dtype!r}")


def _is_local(source: str) -> bool:
    """A path rather than a hub id ("owner/name": one slash, no leading "/", ".", "~")."""
    return os.path.exists(os.path.expanduser(source)) or source.startswith((".", "/", "~")) or source.count("/") != 1


def _component_problems(root: Path, skip: Sequence[str] = ()) -> List[str]:
    """Components listed in root/model_index.json whose files are absent (empty list: all present)."""
    index = root / "model_index.json"
    if not index.is_file():
        return [f"model_index.json (no pipeline index in {root})"]
    problems = []
    for name, entry in json.loads(index.read_text()).items():
        if name.startswith("_") or name in skip or not isinstance(entry, list) or entry[0] is None:
            continue
        folder = root / name
        if not folder.is_dir():
            problems.append(f"{name} (folder {folder} missing)")
            continue
        files = [p.name for p in folder.rglob("*") if p.is_file()]
        if not any(f in _CONFIG_FILES for f in files):
            problems.append(f"{name} (no config in {folder})")
        elif name in _NETWORKS and not any(f.endswith(_WEIGHT_SUFFIXES) for f in files):
            problems.append(f"{name} (no weights in {folder})")
    return problems


def _null_components(root: Path) -> List[str]:
    """Components recorded as null in a local model_index.json (e.g. a pipeline saved without T5)."""
    index = root / "model_index.json"
    if not index.is_file():
        return []
    entries = json.loads(index.read_text())
    return [k for k, v in entries.items() if isinstance(v, list) and v and v[0] is None]


def _diagnose(source: str, skip: Sequence[str]) -> str:
    if _is_local(source):
        root = Path(source).expanduser()
        if not root.exists():
            return f"local path {root} does not exist"
        problems = _component_problems(root, skip)
        return "missing: " + "; ".join(problems) if problems else "all components present (see the error below)"
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(source, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        return (f"hub repo {source!r} is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub could not be reached"
                + (" (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") else ""))
    problems = _component_problems(cached, skip)
    return (f"hub repo {source!r} is only partly cached at {cached}; missing: " + "; ".join(problems)
            if problems else f"hub repo {source!r} is cached at {cached} (see the error below)")


def load_pipeline(source: str = DEFAULT_MODEL, *, dtype=None, without_t5: bool = False, **kwargs):
    """``StableDiffusion3Pipeline.from_pretrained(source)`` with an actionable error.

    Args:
        source: hub repo id (e.g. "stabilityai/stable-diffusion-3.5-medium") or a local directory
            in diffusers' ``save_pretrained`` layout.
        dtype: weights dtype for every component ("fp32", "bf16", "fp16" or a torch dtype).
        without_t5: load without text_encoder_3 / tokenizer_3 (T5-XXL, ~9 GB in bf16); the
            pipeline then feeds zeros in the T5 positions, as diffusers documents. Components
            recorded as null in a local model_index.json are skipped automatically.
        kwargs: passed to ``from_pretrained`` (e.g. ``revision``, ``variant``).
    Returns:
        the pipeline, on the CPU.
    Raises:
        ModelNotAvailableError (an OSError): the weights cannot be found locally nor downloaded;
        the message names the source, the missing components and how to fix it.
        ValueError: a bad dtype.
    """
    from diffusers import StableDiffusion3Pipeline

    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a hub repo id or a local path, got {source!r}")
    dtype = resolve_dtype(dtype)
    skip = set()
    if _is_local(source):
        skip.update(_null_components(Path(source).expanduser()))
    if without_t5:
        skip.update(("text_encoder_3", "tokenizer_3"))
    for name in skip:
        kwargs.setdefault(name, None)
    # diffusers renamed torch_dtype to dtype (the old name still works, with a deprecation warning).
    from diffusers.utils import deprecation_utils

    dtype_key = "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    kwargs[dtype_key] = dtype
    try:
        return StableDiffusion3Pipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        reason = _diagnose(source, tuple(skip))
        repo = DEFAULT_MODEL if _is_local(source) else source
        raise ModelNotAvailableError(
            f"cannot load the SD3 pipeline from {source!r}: {reason}.\n"
            f"Fix: on a machine with internet access run `hf auth login` (SD3.5 is gated: accept "
            f"its license on the hub first) and `hf download {repo} "
            f"--local-dir /path/to/sd3`, copy that directory here and pass it as the model "
            f"(`elbo-kernels train --model /path/to/sd3`), or populate HF_HOME's cache. "
            f"Underlying error: {type(error).__name__}: {error}"
        ) from error


class SD3Model(PipelineModel):
    """FlowModelAdapter over a diffusers StableDiffusion3Pipeline (SD3 / SD3.5).

    Attributes:
        pipeline: the StableDiffusion3Pipeline (tokenizers, text encoders, VAE, scheduler).
        transformer: its SD3Transformer2DModel (LoRA goes here; assignable, kept in sync
            with ``pipeline.transformer``).
        latent_shape: (C, H, W) of one latent at ``resolution``.
        lora_target_modules: attention projection names for peft.
        recommended_lora: {"rank": 32, "alpha": 64.0}.
        sampler_shift: the scheduler's time shift (3.0 for SD3.5); pass it to
            ``timestep_grid(num_steps, shift=...)`` to sample on SD3's own grid.
    """

    recommended_lora = dict(RECOMMENDED_LORA)

    def __init__(
        self,
        pipeline,
        *,
        resolution: Optional[int] = None,
        max_sequence_length: int = 256,
        prompt_cache_size: int = 256,
        decode_batch_size: int = 8,
        gradient_checkpointing: bool = False,
    ):
        """Wrap an already loaded pipeline (see :meth:`load` to load one).

        Raises:
            ValueError: resolution not a positive multiple of vae_scale_factor * patch_size;
                non-positive max_sequence_length, prompt_cache_size or decode_batch_size.
        """
        self.pipeline = pipeline
        self.lora_target_modules: List[str] = list(LORA_TARGET_MODULES)
        factor = pipeline.vae_scale_factor * pipeline.transformer.config.patch_size
        if resolution is None:
            # 512 px (the study's and FlowGRPO's SD3.5 setting), or the model's own size if smaller.
            resolution = min(512, pipeline.transformer.config.sample_size * pipeline.vae_scale_factor)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0 or resolution % factor:
            raise ValueError(f"resolution must be a positive multiple of {factor} (vae scale factor "
                             f"{pipeline.vae_scale_factor} x patch size), got {resolution!r}")
        for name, value in (("max_sequence_length", max_sequence_length), ("prompt_cache_size", prompt_cache_size),
                            ("decode_batch_size", decode_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.prompt_cache_size = prompt_cache_size
        self.decode_batch_size = decode_batch_size
        size = resolution // pipeline.vae_scale_factor
        self.latent_shape: Tuple[int, ...] = (pipeline.transformer.config.in_channels, size, size)
        self._cache: "OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        # The base weights' dtype, fixed before LoRA (peft may add float32 adapters) or wrappers.
        self.weights_dtype = next(pipeline.transformer.parameters()).dtype
        for module in (pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3):
            if module is not None:
                module.requires_grad_(False).eval()
        if gradient_checkpointing:
            pipeline.transformer.enable_gradient_checkpointing()

    # --- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        source: str = DEFAULT_MODEL,
        *,
        device="cpu",
        weights_dtype=None,
        vae_dtype=torch.float32,
        without_t5: bool = False,
        resolution: Optional[int] = None,
        max_sequence_length: int = 256,
        gradient_checkpointing: bool = False,
        **kwargs,
    ) -> "SD3Model":
        """Load from a hub id or local path (see :func:`load_pipeline` for the errors).

        Args:
            weights_dtype: dtype of the frozen weights (transformer base, text encoders):
                "fp32" (default), "bf16" or "fp16". LoRA parameters are created by peft.
            vae_dtype: the VAE's dtype (float32 by default, as FlowGRPO keeps it).
            without_t5: drop T5-XXL (see :func:`load_pipeline`).
            resolution: image size in pixels (latents are resolution / 8 for SD3); default 512,
                or the transformer's native size (sample_size * vae_scale_factor) when smaller.
            max_sequence_length: T5 tokens (the pipeline's default 256; FlowGRPO uses 128).
            gradient_checkpointing: ``transformer.enable_gradient_checkpointing()``.
        Returns:
            an SD3Model on ``device``, transformer in train mode with requires_grad False
            (the trainer adds LoRA and flips the flags it trains).
        Raises:
            ModelNotAvailableError (OSError), ValueError for bad dtypes / sizes.
        """
        pipeline = load_pipeline(source, dtype=weights_dtype, without_t5=without_t5, **kwargs)
        vae_dtype = resolve_dtype(vae_dtype, "vae_dtype")
        if pipeline.vae.dtype != vae_dtype:
            pipeline.vae.to(dtype=vae_dtype)
        pipeline.set_progress_bar_config(disable=True)
        model = cls(pipeline, resolution=resolution, max_sequence_length=max_sequence_length,
                    gradient_checkpointing=gradient_checkpointing)
        model.transformer.requires_grad_(False)
        return model.to(device)

    # --- the FlowModelAdapter protocol (transformer, device and to() from PipelineModel) -----------------
    @property
    def sampler_shift(self) -> float:
        return float(getattr(self.pipeline.scheduler.config, "shift", 1.0))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipeline.scheduler.config.num_train_timesteps)

    def encode_prompts(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Conditioning through ``StableDiffusion3Pipeline.encode_prompt`` (no CFG; "" is unconditional).

        Embeddings are computed once per distinct prompt and kept in an LRU cache of
        ``prompt_cache_size`` prompts (SD3.5 embeddings are ~2.7 MB each in bf16).

        Returns:
            {"encoder_hidden_states": [N, 77 + max_sequence_length, 4096 for SD3.5],
             "pooled_projections": [N, 2048 for SD3.5]} in the text encoders' dtype, on the model's device.
        Raises:
            TypeError: prompts is a bare str or holds a non-str.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of str, got a single str (wrap it in a list)")
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            with torch.no_grad():
                hidden, _, pooled, _ = self.pipeline.encode_prompt(
                    prompt=missing, prompt_2=None, prompt_3=None, device=self.device,
                    do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
                )
            for row, p in enumerate(missing):
                self._cache[p] = (hidden[row], pooled[row])
        for p in prompts:
            self._cache.move_to_end(p)
        hidden = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        while len(self._cache) > max(self.prompt_cache_size, len(set(prompts))):
            self._cache.popitem(last=False)
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        """v_theta(x_t, t, prompt) as StableDiffusion3Pipeline calls its transformer.

        Args:
            x: latents [N, *latent_shape], any float dtype (cast to the transformer's dtype).
            t: [N] (or a scalar) flow times in (0, 1]; the transformer sees t * num_train_timesteps.
            cond: from :meth:`encode_prompts`, batch N.
        Returns:
            v [N, *latent_shape] in x's dtype.
        Raises:
            ValueError: t or cond of the wrong batch size.
        """
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or [N] = [{x.shape[0]}], got shape {tuple(t.shape)}")
        hidden, pooled = cond["encoder_hidden_states"], cond["pooled_projections"]
        if hidden.shape[0] != x.shape[0] or pooled.shape[0] != x.shape[0]:
            raise ValueError(f"cond batch ({hidden.shape[0]}, {pooled.shape[0]}) must match x's batch {x.shape[0]}")
        dtype = self.weights_dtype
        v = self.transformer(
            hidden_states=x.to(dtype),
            timestep=(t.float() * self.num_train_timesteps).to(dtype),
            encoder_hidden_states=hidden.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )[0]
        return v.to(x.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, resolution, resolution] float32 in [0, 1] (in chunks of ``decode_batch_size``).

        Raises:
            ValueError: latents not [N, *latent_shape].
        """
        if latents.dim() != 4 or tuple(latents.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(f"latents must be [N, {', '.join(map(str, self.latent_shape))}], "
                             f"got {tuple(latents.shape)}")
        vae = self.pipeline.vae
        config = vae.config
        images = []
        for chunk in latents.split(self.decode_batch_size):
            z = chunk.to(device=vae.device, dtype=vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
            image = vae.decode(z, return_dict=False)[0]
            images.append((image.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(images)


# --- a tiny random SD3 pipeline, for tests and offline smoke runs -------------------------------------
def save_tiny_pipeline(directory, *, seed: int = 0, sample_size: int = 8, max_length: int = 16,
                       with_t5: bool = False) -> Path:
    """Write a tiny random StableDiffusion3Pipeline to ``directory`` (``save_pretrained`` layout).

    Same classes as SD3.5 (SD3Transformer2DModel, AutoencoderKL with 16 latent channels,
    two CLIPTextModelWithProjection with a byte-level CLIPTokenizer, FlowMatchEulerDiscreteScheduler
    with shift 3) at toy sizes, without T5 (recorded as null; the pipeline feeds zeros there) unless
    ``with_t5``: then a tiny T5EncoderModel (d_model 16, relative positions, so any
    max_sequence_length) reading the same byte-level tokenizer, for scripts that call all three
    encoders themselves (FlowGRPO-family training scripts; their CLIP calls pad to 77 tokens, so
    pass max_length=77 with them).
    ``SD3Model.load(directory, resolution=2 * sample_size)`` loads it like the real model; latents
    are (16, sample_size, sample_size), images 3 x 2*sample_size x 2*sample_size.

    Returns:
        the directory (created).
    """
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from .tiny_tokenizers import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer(max_length)
    vocab = tokenizer.get_vocab()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_config = CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=max_length, projection_dim=8, bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        )
        pipeline = StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(
                sample_size=sample_size, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                pooled_projection_dim=16, pos_embed_max_size=sample_size,
            ),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                latent_channels=16, norm_num_groups=4, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False,
            ),
            text_encoder=CLIPTextModelWithProjection(text_config),
            tokenizer=tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(text_config),
            tokenizer_2=tokenizer,
            text_encoder_3=_tiny_t5(len(vocab)) if with_t5 else None,
            tokenizer_3=tokenizer if with_t5 else None,
        )
    pipeline.save_pretrained(str(directory))
    return directory


def _tiny_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    # d_model = 16 = the two tiny CLIP encoders' concatenated width, the transformer's joint_attention_dim.
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
