"""Image conversions shared by the reward functions.

Rewards accept what FlowGRPO's pipelines and ours produce: a torch tensor [N, C, H, W]
float in [0, 1] (C = 1 or 3), a numpy array [N, H, W, C] (uint8, or float in [0, 1]),
or a list of PIL images.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Sequence, Tuple

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
