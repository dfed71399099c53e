"""Drop-in for DiffusionNFT's ``scripts/train_nft_sd3.py``: its loss block as one fused call.

    from elbo_kernels.integrations.diffusion_nft import nft_loss

    loss, terms = nft_loss(forward_prediction, old_prediction, ref_forward_prediction, x0, noise, t, r, config)

DiffusionNFT trains, per timestep of its loop, on x_t = (1 - t) x0 + t eps with three
velocities at x_t: the current policy v (``forward_prediction``, with gradient), the old
policy v_old (``old_prediction``, the lagging "old" adapter) and the reference v_ref (adapters
disabled). With g = ``config.beta`` (the blend; ``config.train.beta`` is the KL weight) and
r in [0, 1] the optimality probability its loop makes from the clipped advantage:

    v+ = g v + (1 - g) v_old,  v- = (1 + g) v_old - g v
    L+- = mean_D (x0_hat+- - x0)^2 / a+-,  a+- = stopgrad(max(mean_D |x0_hat+- - x0|, 1e-5))
    loss = M mean_b (r L+ + (1 - r) L-) / g  +  config.train.beta mean_b mean_D (v - v_ref)^2

with M = ``config.train.adv_clip_max``: the library's objective "nft" with the adaptive
weighting and the Girsanov KL, i.e. one :func:`elbo_kernels.policy_loss` call. The returned
terms are the keys the script logs from that block: ``policy_loss``,
``unweighted_policy_loss`` (policy_loss / M), ``kl_div_loss`` and ``kl_div`` (the same value).

Config keys read (DiffusionNFT's own; defaults are its config/base.py and config/nft.py):
``beta`` (1.0), ``train.beta`` (1e-4), ``train.adv_clip_max`` (5); and the library's
``train.backend`` ("auto").
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..objectives import policy_loss
from ._config import option


def nft_loss(forward_prediction: torch.Tensor, old_prediction: torch.Tensor, ref_prediction: torch.Tensor,
             x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, optimality: torch.Tensor,
             config) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """DiffusionNFT's loss block (module docstring) on the fused kernels.

    Args:
        forward_prediction: v [B, *S], the trained policy's velocity at x_t (with gradient).
        old_prediction: v_old [B, *S] at the same x_t (no gradient).
        ref_prediction: v_ref [B, *S] at the same x_t (no gradient); unused when train.beta is 0.
        x0: the clean latents [B, *S]; noise: the eps [B, *S] that made x_t; t: [B] in (0, 1].
        optimality: r [B] in [0, 1] (the script's ``r``).
        config: DiffusionNFT's config.
    Returns:
        (loss, terms) with terms the detached logged values named as the script names them.
    Raises:
        ValueError / TypeError from :func:`elbo_kernels.policy_loss`, naming the argument.
    """
    adv_clip_max = float(option(config, "train.adv_clip_max", 5.0))
    kl_weight = float(option(config, "train.beta", 1e-4))
    as_float = [x.float() for x in (forward_prediction, old_prediction, ref_prediction, x0, noise)]
    loss, stats = policy_loss(
        *as_float, t.float(), optimality, objective="nft", weighting="adaptive", nft_beta=float(option(config, "beta", 1.0)),
        adv_clip_max=adv_clip_max, kl="girsanov", beta=kl_weight, backend=option(config, "train.backend", "auto"),
    )
    kl = stats["kl"] if kl_weight > 0 else ((as_float[0] - as_float[2]) ** 2).flatten(1).mean(1).mean().detach()
    return loss, {"policy_loss": stats["policy_loss"], "unweighted_policy_loss": stats["policy_loss"] / adv_clip_max,
                  "kl_div_loss": kl, "kl_div": kl}
