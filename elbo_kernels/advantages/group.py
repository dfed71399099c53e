"""Group-relative advantages.

For the rewards R of one group (the samples of one prompt), with mean m and
population standard deviation s (over all rewards with global_std=True), the
modes of advantages/modes.py:

    standard   A = scale * (R - m) / (s + 1e-4)   (FlowGRPO: scale 1; AWM: 0.2 with a clip at 1)
    exact      A = scale * (R - m)            (the study's default: scale 0.1, no std)
    nft        p = clip(A_std, -M, M) / M / 2 + 1/2 in [0, 1], A_std the standard form,
               M = adv_clip_max: DiffusionNFT's optimality probability

A group whose rewards are all equal gets A = 0 (p = 1/2 for nft), never NaN.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .._validation import check_finite, check_positive
from .modes import ADVANTAGE_MODES, STD_EPS, advantage_mode  # noqa: F401 - STD_EPS re-exported


def _group_index(group_ids, n: int, device) -> torch.Tensor:
    if isinstance(group_ids, torch.Tensor):
        if group_ids.shape != (n,):
            raise ValueError(f"group_ids must have shape [{n}] (one id per reward), got {tuple(group_ids.shape)}")
        if group_ids.is_floating_point():
            raise TypeError(f"group_ids must be an integer tensor or a sequence of hashables, got {group_ids.dtype}")
        return torch.unique(group_ids.to(device), return_inverse=True)[1]
    ids = list(group_ids)
    if len(ids) != n:
        raise ValueError(f"group_ids must have {n} entries (one per reward), got {len(ids)}")
    index = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in ids], device=device, dtype=torch.long)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Union[torch.Tensor, Sequence],
    *,
    mode: str = "standard",
    scale: float = 1.0,
    global_std: bool = False,
    adv_clip_max: float = 5.0,
) -> torch.Tensor:
    """Advantages [N] from rewards [N] and a group id per reward (module docstring has the formulas).

    Args:
        rewards: [N] float tensor, finite.
        group_ids: [N] integer tensor or a sequence of N hashables (e.g. the prompt strings).
        mode: "standard", "exact" or "nft".
        scale: multiplier of the "exact" and "standard" modes.
        global_std: "standard"/"nft": divide by the std of all rewards instead of the group's.
        adv_clip_max: M of the "nft" mapping.
    Returns:
        float tensor [N] (rewards' dtype, at least float32).
    Raises:
        TypeError / ValueError naming the argument for bad shapes, NaN/Inf rewards, empty input
        or an unknown mode.
    """
    record = advantage_mode(mode)
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D tensor [N], got shape {tuple(rewards.shape)}")
    check_finite("rewards", rewards)
    adv_clip_max = check_positive("adv_clip_max", adv_clip_max)
    dtype = torch.promote_types(rewards.dtype, torch.float32) if rewards.is_floating_point() else torch.float32
    r = rewards.to(dtype)
    n = r.shape[0]
    index = _group_index(group_ids, n, r.device)
    groups = int(index.max()) + 1
    count = torch.zeros(groups, dtype=dtype, device=r.device).index_add_(0, index, torch.ones_like(r))
    mean = torch.zeros(groups, dtype=dtype, device=r.device).index_add_(0, index, r) / count
    centred = r - mean[index]
    # A group with no spread carries no signal: exact zeros, not rounding noise / 1e-4.
    empty = torch.zeros(groups, dtype=dtype, device=r.device)
    spread = empty.scatter_reduce(0, index, r, "amax", include_self=False) - empty.scatter_reduce(
        0, index, r, "amin", include_self=False
    )
    centred = torch.where(spread[index] > 0, centred, torch.zeros_like(centred))
    std = None
    if record.uses_std and global_std:
        std = r.std(unbiased=False)
    elif record.uses_std:
        var = torch.zeros(groups, dtype=dtype, device=r.device).index_add_(0, index, centred.square()) / count
        std = var.sqrt()[index]
    return record.formula(r, centred, std, scale, adv_clip_max)
