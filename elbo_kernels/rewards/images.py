"""Image conversions shared by the reward functions, and the combinator of weighted rewards.

Rewards accept what FlowGRPO's pipelines and ours produce: a torch tensor [N, C, H, W]
float in [0, 1] (C = 1 or 3), a numpy array [N, H, W, C] (uint8, or float in [0, 1]),
or a list of PIL images.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

RewardFn = Callable[..., Tuple[Dict[str, np.ndarray], dict]]


def to_uint8_nhwc(images) -> np.ndarray:
    """uint8 [N, H, W, C] (C = 1 or 3) from a tensor [N, C, H, W] in [0, 1], an NHWC array or PIL images.

    Float values are rounded as FlowGRPO does: (x * 255).round().clamp(0, 255).
    Raises:
        TypeError: an unsupported type. ValueError: wrong rank or channel count.
    """
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        arrays = [np.asarray(image) for image in images]
        arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
        return np.stack(arrays).astype(np.uint8)
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:  # [N, H, W] grayscale (the digits judges' layout)
            images = images[:, None]
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, C, H, W] with C = 1 or 3, got {tuple(images.shape)}")
        if images.is_floating_point():
            images = (images.detach().float() * 255).round().clamp(0, 255)
        return images.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images as a numpy array must be [N, H, W, C] with C = 1 or 3, got {images.shape}")
        if images.dtype != np.uint8:
            images = np.clip(np.round(images.astype(np.float64) * 255), 0, 255).astype(np.uint8)
        return images
    raise TypeError(f"images must be a torch.Tensor [N, C, H, W], a numpy array [N, H, W, C] or a list of "
                    f"PIL images, got {type(images).__name__}")


def to_pil(images) -> List:
    """A list of RGB PIL images (grayscale is replicated to 3 channels)."""
    from PIL import Image

    array = to_uint8_nhwc(images)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return [Image.fromarray(a) for a in array]


def check_batch(images, prompts: Sequence[str], metadata) -> int:
    """N, after checking that prompts (and metadata, when given) have one entry per image.

    Raises:
        TypeError: prompts is a bare str. ValueError: mismatched lengths.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, got a single str")
    n = len(images)
    if len(prompts) != n:
        raise ValueError(f"got {n} images for {len(prompts)} prompts")
    if metadata is not None and not isinstance(metadata, Mapping) and len(metadata) != n:
        raise ValueError(f"metadata has {len(metadata)} entries for {n} images")
    return n


def _accepts(fn: Callable, keyword: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def multi_score(weights: Mapping[str, float], reward_fns: Optional[Mapping[str, RewardFn]] = None) -> RewardFn:
    """FlowGRPO's ``multi_score``: several rewards and "avg" = their weighted sum.

    Args:
        weights: reward name -> weight, e.g. {"pickscore": 0.5, "ocr": 0.5}.
        reward_fns: name -> reward function; names not given here come from the registry
            (:func:`elbo_kernels.rewards.get_reward`).
    Returns:
        ``fn(images, prompts, metadata, **kwargs) -> (scores, info)`` where scores holds each
        reward's own score array (float32 [N]) under its name, every extra per-image array it
        returned (e.g. GenEval's "strict_accuracy"), and "avg"; info maps each name to that reward's
        info. Keyword arguments such as FlowGRPO's ``only_strict`` reach the rewards that accept them.
    Raises:
        ValueError: empty weights, non-finite weights, or an unknown reward name.
    """
    if not weights:
        raise ValueError("weights must name at least one reward, got an empty mapping")
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not np.isfinite(weight):
            raise ValueError(f"weights[{name!r}] must be a finite number, got {weight!r}")
    fns: Dict[str, RewardFn] = {}
    for name in weights:
        if reward_fns is not None and name in reward_fns:
            fns[name] = reward_fns[name]
        else:
            from . import get_reward

            fns[name] = get_reward(name)

    def score(images, prompts, metadata=None, **kwargs):
        total: Optional[np.ndarray] = None
        scores: Dict[str, np.ndarray] = {}
        info: Dict[str, dict] = {}
        for name, weight in weights.items():
            fn = fns[name]
            extra = {k: v for k, v in kwargs.items() if _accepts(fn, k)}
            result, reward_info = fn(images, prompts, metadata, **extra)
            values = named_scores(result, name)
            for key, value in result.items() if isinstance(result, Mapping) else ():
                if key not in ("avg", name):
                    scores[key] = np.asarray(value)
            scores[name] = values
            info[name] = reward_info
            total = weight * values if total is None else total + weight * values
        scores["avg"] = total.astype(np.float32)
        return scores, info

    return score


def named_scores(result: Union[Mapping, Sequence, np.ndarray], name: str) -> np.ndarray:
    """float32 [N] scores of one reward's result: its ``name`` entry, else "avg", else the array itself.

    Raises:
        ValueError: a dict with neither key.
    """
    if isinstance(result, Mapping):
        for key in (name, "avg"):
            if key in result:
                return np.asarray(result[key], dtype=np.float32).reshape(-1)
        raise ValueError(f"reward {name!r} returned keys {sorted(result)} without {name!r} or 'avg'")
    return np.asarray(result, dtype=np.float32).reshape(-1)
