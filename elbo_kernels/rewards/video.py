"""Scoring videos with an image reward: every frame is scored, a video's reward is the mean of its frames.

Video reward models exist (FlowGRPO's Wan runs score frames with image rewards too); the mean over frames
is the aggregation that keeps the reward on the image reward's scale, so the same advantage scale and
KL weight carry over from image runs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def video_reward(reward_fn, videos: torch.Tensor, prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None,
                 **kwargs):
    """``reward_fn`` (FlowGRPO's image interface) applied to each frame, averaged per video.

    Args:
        reward_fn: ``(images [M, C, H, W], prompts [M], metadata) -> (scores dict, info)``.
        videos: [N, C, F, H, W] in [0, 1].
        prompts: N prompts (each frame is scored against its video's prompt).
        metadata: None or N per-prompt dicts (repeated per frame likewise).
    Returns:
        (scores, info): every per-image score column of ``reward_fn`` averaged over frames ([N] each),
        plus "frames_<name>" with the per-frame scores [N, F]; info as ``reward_fn`` returned it.
    Raises:
        ValueError: videos not 5-D, or len(prompts) != N.
    """
    if videos.dim() != 5:
        raise ValueError(f"videos must be [N, C, F, H, W], got shape {tuple(videos.shape)}")
    n, c, f, h, w = videos.shape
    if len(prompts) != n:
        raise ValueError(f"prompts must hold one prompt per video ({n}), got {len(prompts)}")
    frames = videos.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)
    frame_prompts = [p for p in prompts for _ in range(f)]
    frame_metadata = None if metadata is None else [m for m in metadata for _ in range(f)]
    scores, info = reward_fn(frames, frame_prompts, frame_metadata, **kwargs)
    out = {}
    for name, column in scores.items():
        values = column.detach().cpu().double().numpy() if isinstance(column, torch.Tensor) else np.asarray(column)
        if values.shape != (n * f,):
            raise ValueError(f"reward column {name!r} has shape {values.shape} for {n * f} frames")
        per_frame = values.astype(np.float64).reshape(n, f)
        out[name] = per_frame.mean(axis=1)
        out[f"frames_{name}"] = per_frame
    return out, info
