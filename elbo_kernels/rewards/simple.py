"""Rewards that need no weights: JPEG (in)compressibility (FlowGRPO's definition) and brightness.

    jpeg_incompressibility   size of the image saved as JPEG (quality 95, PIL) in kB (bytes / 1000)
    jpeg_compressibility     -size_kB / 500  (FlowGRPO scales by 1/500, so values sit near [-1, 0])
    brightness               mean pixel value in [0, 1] (a toy reward for tests and smoke runs)
"""

from __future__ import annotations

import io
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .images import check_batch, to_uint8_nhwc

JPEG_QUALITY = 95
COMPRESSIBILITY_SCALE = 500.0


def jpeg_sizes_kb(images, quality: int = JPEG_QUALITY) -> np.ndarray:
    """float32 [N]: bytes of each image saved as JPEG at ``quality``, divided by 1000.

    Raises:
        TypeError / ValueError: see :func:`~elbo_kernels.rewards.images.to_uint8_nhwc`.
    """
    from PIL import Image

    sizes = []
    for array in to_uint8_nhwc(images):
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return np.asarray(sizes, dtype=np.float32)


def jpeg_incompressibility(images, prompts: Sequence[str], metadata: Optional[Sequence] = None
                           ) -> Tuple[Dict[str, np.ndarray], dict]:
    """Reward = JPEG size in kB. Returns ({"jpeg_incompressibility": [N], "avg": [N]}, {})."""
    check_batch(images, prompts, metadata)
    sizes = jpeg_sizes_kb(images)
    return {"jpeg_incompressibility": sizes, "avg": sizes.copy()}, {}


def jpeg_compressibility(images, prompts: Sequence[str], metadata: Optional[Sequence] = None
                         ) -> Tuple[Dict[str, np.ndarray], dict]:
    """Reward = -(JPEG size in kB) / 500. Returns ({"jpeg_compressibility": [N], "avg": [N]}, {})."""
    check_batch(images, prompts, metadata)
    scores = -jpeg_sizes_kb(images) / COMPRESSIBILITY_SCALE
    return {"jpeg_compressibility": scores, "avg": scores.copy()}, {}


def brightness(images, prompts: Sequence[str], metadata: Optional[Sequence] = None
               ) -> Tuple[Dict[str, np.ndarray], dict]:
    """Reward = mean pixel value in [0, 1]. Returns ({"brightness": [N], "avg": [N]}, {})."""
    check_batch(images, prompts, metadata)
    values = to_uint8_nhwc(images).reshape(len(images), -1).mean(axis=1).astype(np.float32) / 255
    return {"brightness": values, "avg": values.copy()}, {}
