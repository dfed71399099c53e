"""Which adapter serves a diffusers folder, and what the adapters over diffusers pipelines share.

``load_model(source, ...)`` reads ``model_index.json`` (a local ``save_pretrained`` folder,
or the file of a hub repo: from the local cache, or downloaded when the hub is reachable)
and builds the adapter registered for its ``_class_name``:

    StableDiffusion3Pipeline   elbo_kernels.models.sd3.SD3Model
    FluxPipeline               elbo_kernels.models.flux.FluxModel
    WanPipeline                elbo_kernels.models.wan.WanModel
    QwenImagePipeline          elbo_kernels.models.qwen_image.QwenImageModel

Anything else raises ValueError listing these. The shared pieces below (the prompt cache,
loading with an actionable error, locally built tokenizers for the tiny test models) keep
each adapter file about its family's math: latent layout, timestep convention, decoding.
"""

from __future__ import annotations

import importlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .base import PipelineModel
from .sd3 import ModelNotAvailableError, _diagnose, _is_local, _null_components, resolve_dtype
from .tiny_tokenizers import byte_level_vocab, tiny_clip_tokenizer, tiny_qwen_tokenizer, tiny_t5_tokenizer  # noqa: F401

ADAPTERS: Dict[str, str] = {
    "StableDiffusion3Pipeline": "sd3:SD3Model",
    "FluxPipeline": "flux:FluxModel",
    "WanPipeline": "wan:WanModel",
    "QwenImagePipeline": "qwen_image:QwenImageModel",
}
"""model_index.json ``_class_name`` -> "module:class" of the adapter (modules under elbo_kernels.models)."""

FAMILY_OPTIONS: Dict[str, Sequence[str]] = {
    "StableDiffusion3Pipeline": ("without_t5",),
    "FluxPipeline": ("guidance",),
    "WanPipeline": ("frames",),
    "QwenImagePipeline": (),
}
"""Load options that only one family understands (the rest every adapter takes)."""


def pipeline_class_name(source: str) -> str:
    """The ``_class_name`` in ``source``'s model_index.json (local folder or hub repo id).

    Raises:
        ModelNotAvailableError (OSError): no model_index.json locally, in the cache, nor on a reachable hub.
        ValueError: the file has no ``_class_name``.
    """
    if _is_local(source):
        index = Path(source).expanduser() / "model_index.json"
        if not index.is_file():
            raise ModelNotAvailableError(f"cannot load a diffusers pipeline from {source!r}: "
                                         f"{_diagnose(source, ())}")
    else:
        try:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(source, "model_index.json"))
        except Exception as error:  # noqa: BLE001 - offline, gated, unknown repo: all "not available"
            raise ModelNotAvailableError(
                f"cannot read model_index.json of {source!r}: {_diagnose(source, ())}. Fix: download the "
                f"repository on a machine with internet access (`huggingface-cli download {source} --local-dir "
                f"/path/to/model`) and pass the folder as --model. Underlying error: {type(error).__name__}: "
                f"{error}") from error
    name = json.loads(index.read_text()).get("_class_name")
    if not isinstance(name, str):
        raise ValueError(f"{index} has no '_class_name': not a diffusers pipeline index")
    return name


def adapter_class(class_name: str):
    """The adapter class registered for a pipeline class name; ValueError lists the supported ones."""
    if class_name not in ADAPTERS:
        raise ValueError(f"model is a {class_name!r}, which has no adapter; supported pipelines: "
                         + ", ".join(ADAPTERS) + " (or 'digits', the embedded default)")
    module, name = ADAPTERS[class_name].split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def load_model(source: str, *, lora_target_modules: Optional[Sequence[str]] = None, **options):
    """The adapter for ``source`` (hub id or local diffusers folder), chosen by its pipeline class.

    Args:
        source: hub repo id or a local folder in ``save_pretrained`` layout.
        lora_target_modules: replaces the family's default LoRA targets (module name suffixes).
        options: passed to the adapter's ``load`` (device, weights_dtype, resolution,
            gradient_checkpointing, and per family: without_t5 for SD3, guidance for FLUX.1,
            frames for Wan). None values mean "the family's default" and are dropped.
    Raises:
        ValueError: an unsupported pipeline (the message lists the supported ones), or a
        family option given to another family (named, with the family it belongs to).
        ModelNotAvailableError (OSError): the weights cannot be found.
    """
    class_name = pipeline_class_name(source)
    cls = adapter_class(class_name)
    for family, names in FAMILY_OPTIONS.items():
        for name in names:
            if family != class_name and options.get(name) not in (None, False):
                raise ValueError(f"config key {name!r} (value {options[name]!r}) applies to {family} models only; "
                                 f"{source!r} is a {class_name}")
    kwargs = {k: v for k, v in options.items()
              if v is not None and (k in FAMILY_OPTIONS[class_name] or not any(k in n for n in FAMILY_OPTIONS.values()))}
    model = cls.load(source, **kwargs)
    if lora_target_modules is not None:
        targets = [str(m).strip() for m in lora_target_modules if str(m).strip()]
        if not targets:
            raise ValueError(f"lora_target_modules must name at least one module, got {lora_target_modules!r}")
        names = [n for n, _ in model.transformer.named_modules()]
        unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if unmatched:
            raise ValueError(f"lora_target_modules {unmatched} match no module of the {class_name} transformer; "
                             f"its family default is {model.lora_target_modules}")
        model.lora_target_modules = targets
    return model


def load_pipeline(class_name: str, source: str, *, dtype=None, **kwargs):
    """``<class_name>.from_pretrained(source)`` in ``dtype``, with the missing parts named on failure.

    Components recorded as null in a local model_index.json are passed as None.
    Raises ModelNotAvailableError (OSError) naming the source and what is missing.
    """
    import diffusers
    from diffusers.utils import deprecation_utils

    cls = getattr(diffusers, class_name)
    if _is_local(source):
        for name in _null_components(Path(source).expanduser()):
            kwargs.setdefault(name, None)
    # diffusers renamed torch_dtype to dtype (the old name still works, with a deprecation warning).
    key = "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    kwargs[key] = resolve_dtype(dtype)
    try:
        pipeline = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ModelNotAvailableError(
            f"cannot load the {class_name} from {source!r}: {_diagnose(source, ())}. Fix: `huggingface-cli "
            f"download <repo> --local-dir /path/to/model` on a machine with internet access (accept the model's "
            f"license on the hub first where it is gated) and pass the folder as --model. Underlying error: "
            f"{type(error).__name__}: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class PromptCache:
    """Per-prompt conditioning tensors, computed once and kept in a bounded LRU.

    ``encode(missing_prompts) -> {key: [len(missing), ...]}`` is called for the prompts not
    yet cached; ``__call__`` returns the batch stacked in the order asked for. ``encode`` may
    also return, per key, a list of per-prompt tensors of different lengths (text embeddings
    trimmed to their tokens): a batch is then zero-padded at the end of dim 0 to its longest.
    """

    def __init__(self, encode: Callable[[List[str]], Dict[str, torch.Tensor]], size: int = 256):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"prompt_cache_size must be an int >= 1, got {size!r}")
        self.encode = encode
        self.size = size
        self.entries: "OrderedDict[str, Dict[str, torch.Tensor]]" = OrderedDict()

    def __call__(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of str, got a single str (wrap it in a list)")
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
        missing = list(dict.fromkeys(p for p in prompts if p not in self.entries))
        if missing:
            with torch.no_grad():
                batch = self.encode(missing)
            for row, p in enumerate(missing):
                self.entries[p] = {k: v[row] for k, v in batch.items()}
        for p in prompts:
            self.entries.move_to_end(p)
        out = {k: _stack_padded([self.entries[p][k] for p in prompts]) for k in self.entries[prompts[0]]}
        while len(self.entries) > max(self.size, len(set(prompts))):
            self.entries.popitem(last=False)
        return out

    def clear(self) -> None:
        self.entries.clear()


class PipelineAdapter(PipelineModel):
    """What the FlowModelAdapter implementations over a diffusers pipeline have in common.

    Subclasses set ``latent_shape`` and ``lora_target_modules`` and implement
    ``_encode(prompts) -> {key: [N, ...]}``, ``velocity`` and ``decode``.
    """

    def __init__(self, pipeline, *, prompt_cache_size: int = 256, gradient_checkpointing: bool = False):
        self.pipeline = pipeline
        # The base weights' dtype, fixed before LoRA (peft may add float32 adapters) or wrappers. diffusers'
        # ModelMixin.dtype skips the modules some families keep in float32 (Wan's scale_shift_table, first).
        self.weights_dtype = pipeline.transformer.dtype
        self._cache = PromptCache(self._encode, prompt_cache_size)
        freeze(*(getattr(pipeline, name, None) for name in ("vae", "text_encoder", "text_encoder_2")))
        if gradient_checkpointing:
            pipeline.transformer.enable_gradient_checkpointing()

    @classmethod
    def _load(cls, class_name: str, source: str, *, device, weights_dtype, vae_dtype, pipeline_kwargs: dict,
              **options):
        """The families' ``load``: the pipeline in ``weights_dtype`` with its VAE in ``vae_dtype``, the
        adapter built with ``options``, the transformer frozen (the trainer adds LoRA), moved to ``device``."""
        pipeline = load_pipeline(class_name, source, dtype=weights_dtype, **pipeline_kwargs)
        vae_dtype = resolve_dtype(vae_dtype, "vae_dtype")
        if pipeline.vae.dtype != vae_dtype:
            pipeline.vae.to(dtype=vae_dtype)
        model = cls(pipeline, **options)
        model.transformer.requires_grad_(False)
        return model.to(device)

    def encode_prompts(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Conditioning for ``prompts`` (batch-first; computed once per distinct prompt, LRU-cached).

        Raises TypeError for a bare str or a non-str item.
        """
        return self._cache(prompts)

    def _encode(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def _stack_padded(rows: List[torch.Tensor]) -> torch.Tensor:
    length = max(r.shape[0] for r in rows) if rows[0].dim() else 0
    if all(r.shape == rows[0].shape for r in rows):
        return torch.stack(rows)
    return torch.stack([torch.cat([r, r.new_zeros((length - r.shape[0],) + tuple(r.shape[1:]))]) for r in rows])


def check_latents(latents: torch.Tensor, latent_shape) -> None:
    """ValueError unless ``latents`` is [N, *latent_shape] (what every family's decode takes)."""
    if tuple(latents.shape[1:]) != tuple(latent_shape):
        raise ValueError(f"latents must be [N, {', '.join(map(str, latent_shape))}], got {tuple(latents.shape)}")


def vae_latent_stats(vae):
    """(mean, std) [1, C, 1, 1, 1] of the Wan-family VAE's latents (Wan and Qwen-Image), on its device and dtype."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(vae.device, vae.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(vae.device, vae.dtype)
    return mean, std


def check_resolution(resolution, factor: int) -> int:
    """A positive int multiple of ``factor``; ValueError naming ``resolution`` otherwise."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0 or resolution % factor:
        raise ValueError(f"resolution must be a positive multiple of {factor} (vae scale factor x patch size), "
                         f"got {resolution!r}")
    return resolution


def freeze(*modules) -> None:
    """Frozen, eval-mode components (text encoders, VAE): the trainer only trains the transformer."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False).eval()


def check_velocity_inputs(x: torch.Tensor, t, batch: int, latent_shape) -> torch.Tensor:
    """t as an [N] tensor on x's device; ValueError when x, t or the conditioning disagree on N or shape."""
    if tuple(x.shape[1:]) != tuple(latent_shape):
        raise ValueError(f"x must be [N, {', '.join(map(str, latent_shape))}], got {tuple(x.shape)}")
    t = torch.as_tensor(t, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or [N] = [{x.shape[0]}], got shape {tuple(t.shape)}")
    if batch != x.shape[0]:
        raise ValueError(f"cond batch {batch} must match x's batch {x.shape[0]}")
    return t
