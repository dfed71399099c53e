"""CLIP-family rewards loaded through transformers, with FlowGRPO's normalisations.

    pickscore   logit_scale.exp() * cos(text, image) / 26     model "yuvalkirstain/PickScore_v1",
                                                              processor "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    clipscore   logit_scale.exp() * cos(text, image) / 100    "openai/clip-vit-large-patch14"
    aesthetic   MLP(normalised CLIP image embedding)           CLIP "openai/clip-vit-large-patch14" + the LAION
                                                              improved-aesthetic-predictor head
                                                              (sac+logos+ava1-l14-linearMSE.pth; a local file)

Every source may be a hub id or a local directory (``save_pretrained`` layout); the
defaults can be overridden by environment variables (ELBO_KERNELS_PICKSCORE_MODEL,
ELBO_KERNELS_PICKSCORE_PROCESSOR, ELBO_KERNELS_CLIP_MODEL, ELBO_KERNELS_AESTHETIC_HEAD).
Missing weights raise :class:`RewardUnavailableError` (an OSError) naming the reward, the
source and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .images import check_batch, to_pil

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_MODEL = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class RewardUnavailableError(OSError):
    """A reward's weights (or its package) are not available on this machine."""


def unavailable(reward: str, source: str, what: str, error, env: Optional[str] = None):
    """The error raised when ``reward`` cannot load ``what`` from ``source`` (``error``: an exception or a reason)."""
    hint = f" or set {env}=DIR" if env else ""
    underlying = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return RewardUnavailableError(
        f"reward {reward!r} cannot load its {what} from {source!r} (not on local disk or in the Hugging Face "
        f"cache, and the hub could not be reached). Fix: on a connected machine run "
        f"`hf download {source} --local-dir DIR`, copy DIR here and pass it as the {what}{hint}. "
        f"Underlying error: {underlying}"
    )


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """Why the Hugging Face hub cannot be reached (HF_HUB_OFFLINE, or no TCP connection within
    ``timeout`` seconds to $HF_ENDPOINT), or None when it answers.

    Asked before a download: unreachable, the hub client would retry each file for minutes
    before failing, while the answer here takes at most ``timeout`` seconds.
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host}:{port} is unreachable ({type(error).__name__}: {error})"
    return None


def _load(cls, source: str, reward: str, what: str, env: Optional[str] = None):
    if not Path(source).expanduser().exists():  # a hub id: the cache first, with no network at all
        try:
            return cls.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            offline = hub_unreachable()
            if offline is not None:
                raise unavailable(reward, source, what, offline, env) from None
    try:
        return cls.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise unavailable(reward, source, what, error, env) from error


def _features(output) -> torch.Tensor:
    # transformers < 5 returns the projected embedding; 5.x may return a model output with pooler_output.
    if isinstance(output, torch.Tensor):
        return output
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot read embeddings from {type(output).__name__}")


class _ClipSimilarity:
    """logit_scale.exp() * cos(text, image) / divisor, per (prompt, image) pair."""

    name = "clip"
    divisor = 100.0

    def __init__(self, model: str, processor: Optional[str] = None, *, device=None, dtype=torch.float32,
                 batch_size: int = 32):
        from transformers import AutoProcessor, CLIPModel

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = _load(AutoProcessor, processor or model, self.name, "processor", self._env("PROCESSOR"))
        self.model = _load(CLIPModel, model, self.name, "model", self._env("MODEL"))
        self.model.eval().requires_grad_(False).to(self.device, dtype)
        self.dtype = dtype
        self.batch_size = batch_size

    def _env(self, part: str) -> Optional[str]:
        return None

    @torch.no_grad()
    def similarity(self, images, prompts: Sequence[str]) -> np.ndarray:
        out = []
        pil = to_pil(images)
        for start in range(0, len(pil), self.batch_size):
            chunk, texts = pil[start:start + self.batch_size], list(prompts[start:start + self.batch_size])
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            tokens = self.processor(text=texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            image = _features(self.model.get_image_features(pixel_values=pixels)).float()
            text = _features(self.model.get_text_features(**tokens)).float()
            image = image / image.norm(dim=-1, keepdim=True)
            text = text / text.norm(dim=-1, keepdim=True)
            scores = self.model.logit_scale.exp().float() * (image * text).sum(-1) / self.divisor
            out.append(scores.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def __call__(self, images, prompts: Sequence[str], metadata=None) -> Tuple[Dict[str, np.ndarray], dict]:
        """({name: float32 [N], "avg": same}, {}) for images [N, C, H, W] in [0, 1] (or NHWC / PIL)."""
        check_batch(images, prompts, metadata)
        scores = self.similarity(images, prompts)
        return {self.name: scores, "avg": scores.copy()}, {}


class ClipScore(_ClipSimilarity):
    """FlowGRPO's clipscore: CLIP ViT-L/14 logits_per_image diagonal / 100."""

    name = "clipscore"
    divisor = 100.0

    def __init__(self, model: Optional[str] = None, *, device=None, dtype=torch.float32, batch_size: int = 32):
        super().__init__(model or os.environ.get("ELBO_KERNELS_CLIP_MODEL", CLIP_MODEL), device=device, dtype=dtype,
                         batch_size=batch_size)

    def _env(self, part: str) -> Optional[str]:
        return "ELBO_KERNELS_CLIP_MODEL"


class PickScore(_ClipSimilarity):
    """PickScore (FlowGRPO's normalisation: / 26, roughly into [0, 1])."""

    name = "pickscore"
    divisor = 26.0

    def __init__(self, model: Optional[str] = None, processor: Optional[str] = None, *, device=None,
                 dtype=torch.float32, batch_size: int = 32):
        super().__init__(model or os.environ.get("ELBO_KERNELS_PICKSCORE_MODEL", PICKSCORE_MODEL),
                         processor or os.environ.get("ELBO_KERNELS_PICKSCORE_PROCESSOR", PICKSCORE_PROCESSOR),
                         device=device, dtype=dtype, batch_size=batch_size)

    def _env(self, part: str) -> Optional[str]:
        return f"ELBO_KERNELS_PICKSCORE_{part}"


def aesthetic_head(embed_dim: int = 768) -> nn.Sequential:
    """The LAION improved-aesthetic-predictor MLP (layer indices match its checkpoint's ``layers.N`` keys)."""
    return nn.Sequential(
        nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )


class AestheticScore:
    """LAION aesthetic score: the MLP head on the L2-normalised CLIP image embedding (about 1..10)."""

    name = "aesthetic"

    def __init__(self, head: Optional[str] = None, clip_model: Optional[str] = None, *, device=None,
                 dtype=torch.float32, batch_size: int = 32):
        """Args: head: path of the MLP weights (.pth or .safetensors, keys ``layers.N.*``);
        clip_model: CLIP hub id or local path. Raises RewardUnavailableError when either is missing."""
        from transformers import AutoProcessor, CLIPModel

        head = head or os.environ.get("ELBO_KERNELS_AESTHETIC_HEAD")
        clip_model = clip_model or os.environ.get("ELBO_KERNELS_CLIP_MODEL", CLIP_MODEL)
        if head is None or not Path(head).is_file():
            raise RewardUnavailableError(
                f"reward 'aesthetic' needs the LAION improved-aesthetic-predictor head ({AESTHETIC_HEAD_FILE}); "
                f"got {head!r}. Fix: download it on a connected machine (it is in the "
                f"christophschuhmann/improved-aesthetic-predictor repository), copy it here and pass its path "
                f"(AestheticScore(head=...)) or set ELBO_KERNELS_AESTHETIC_HEAD=/path/to/{AESTHETIC_HEAD_FILE}"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = _load(AutoProcessor, clip_model, self.name, "CLIP processor", "ELBO_KERNELS_CLIP_MODEL")
        self.clip = _load(CLIPModel, clip_model, self.name, "CLIP model", "ELBO_KERNELS_CLIP_MODEL")
        self.clip.eval().requires_grad_(False).to(self.device, dtype)
        if head.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(head)
        else:
            state = torch.load(head, map_location="cpu", weights_only=True)
        state = {k.removeprefix("layers."): v for k, v in state.items()}
        self.head = aesthetic_head(state["0.weight"].shape[1])
        self.head.load_state_dict(state)
        self.head.eval().requires_grad_(False).to(self.device, torch.float32)
        self.dtype = dtype
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images, prompts: Sequence[str], metadata=None) -> Tuple[Dict[str, np.ndarray], dict]:
        """({"aesthetic": float32 [N], "avg": same}, {}); prompts are not used (only their count is checked)."""
        check_batch(images, prompts, metadata)
        pil = to_pil(images)
        out = []
        for start in range(0, len(pil), self.batch_size):
            pixels = self.processor(images=pil[start:start + self.batch_size], return_tensors="pt")["pixel_values"]
            embeds = _features(self.clip.get_image_features(pixel_values=pixels.to(self.device, self.dtype))).float()
            embeds = embeds / embeds.norm(dim=-1, keepdim=True)
            out.append(self.head(embeds).squeeze(-1).cpu().numpy())
        scores = np.concatenate(out).astype(np.float32)
        return {self.name: scores, "avg": scores.copy()}, {}


class ImageRewardScore:
    """ImageReward (THUDM) through its own package (``pip install image-reward``)."""

    name = "imagereward"

    def __init__(self, model: Optional[str] = None, *, device=None):
        """Args: model: "ImageReward-v1.0" or a local checkpoint path (ELBO_KERNELS_IMAGEREWARD_MODEL).
        Raises RewardUnavailableError when the package or the weights are missing."""
        model = model or os.environ.get("ELBO_KERNELS_IMAGEREWARD_MODEL", "ImageReward-v1.0")
        try:
            import ImageReward  # noqa: N813 - the package's own name
        except ImportError as error:
            raise RewardUnavailableError(
                "reward 'imagereward' needs the ImageReward package: `pip install image-reward`, then the "
                f"checkpoint {model!r} (downloaded on first use; offline, pass a local .pt path via "
                f"ELBO_KERNELS_IMAGEREWARD_MODEL). Underlying error: {error}"
            ) from error
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = ImageReward.load(model, device=self.device)
        except Exception as error:  # noqa: BLE001 - its loader raises many kinds; all mean "not available"
            raise unavailable(self.name, model, "checkpoint", error, "ELBO_KERNELS_IMAGEREWARD_MODEL") from error

    @torch.no_grad()
    def __call__(self, images, prompts: Sequence[str], metadata=None) -> Tuple[Dict[str, np.ndarray], dict]:
        """({"imagereward": float32 [N], "avg": same}, {})."""
        check_batch(images, prompts, metadata)
        scores = []
        for prompt, image in zip(prompts, to_pil(images)):
            score = self.model.score(prompt, [image])
            scores.append(float(score[0] if isinstance(score, (list, tuple)) else score))
        scores = np.asarray(scores, dtype=np.float32)
        return {self.name: scores, "avg": scores.copy()}, {}
