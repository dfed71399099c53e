"""Drop-in for AWM's ``scripts/train_sd3_awm.py``: its loss block as one fused call.

    from elbo_kernels.integrations.awm import awm_loss

    loss, step_info = awm_loss(sample, config, model_output, model_output_ref, model_output_ema)

Advantage Weighted Matching trains on T = ``config.train.train_timesteps`` draws per sample,
batched timestep-major (row k B + b is draw k of sample b): x_t = (1 - t) x0 + t eps with the
clean latents ``sample["clean_latents"]``, noise ``sample["train_random_noise"]`` and t
``sample["timesteps"]`` (each [T B, ...]). Its per-draw log-likelihood surrogate is an ELBO
of the (guided, with CFG) velocity v under a weighting of the mean squared residual
m = mean_D (eps - x0 - v)^2:

    "ghuber"   e = -t ((m + 1e-10)^p - 1e-10^p) / p,  p = train.ghuber_power   (its GenEval configs)
    "t"        e = -t m        "t**2"  e = -t^2 m        "Uniform"  e = -m

and its loss, with A' = clip(A, -M, M) (times advantage_max / M when advantage_max is set) and
the ratio q = exp(e - e_old) against the old ELBOs recorded before the update:

    loss = mean max(-A' q, -A' clip(q, 1 - c, 1 + c))                       (GRPO's clip, c = clip_range)
         + train.beta     mean k(v, v_ref)     (KL to the base model, kl_weight)
         + train.ema_beta mean k(v, v_ema)     (KL to the EMA anchor, kl_ema_weight)

with k = mean_D (.)^2 ("Uniform") or that over 2 s(t)^2, s(t) = 0.7 sqrt(t / (1 - min(t, 0.99)))
("ELBO"). That is :func:`elbo_kernels.policy_loss` with objective "grpo", the ghuber (or t_linear,
t_squared, simple) weighting, ``elbo_old`` = the recorded ELBOs, kl "girsanov" / "girsanov_sde"
and the anchor term: one call. ``step_info`` holds what the script logs from that block:
``clipfrac``, ``policy_loss``, ``kl_loss`` (beta > 0), ``ema_kl_loss`` (ema_beta > 0).

Only ``train.loss_type = "exp_first"`` (a ratio per draw; every published config) maps to a
per-draw objective; "sum_first" and the "huber" weighting raise ValueError.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from ..estimators import Weighting, ghuber
from ..objectives import policy_loss
from ._config import option

WEIGHTINGS = {"t": "t_linear", "t**2": "t_squared", "Uniform": "simple", "ghuber": None}
KL_WEIGHTS = {"Uniform": "girsanov", "ELBO": "girsanov_sde"}


def awm_weighting(config) -> Union[str, Weighting]:
    """The library weighting of AWM's ``train.weighting`` (ghuber with ``train.ghuber_power``)."""
    name = option(config, "train.weighting", "Uniform")
    if name not in WEIGHTINGS:
        raise ValueError(f"config.train.weighting {name!r} has no fused counterpart; expected one of "
                         f"{', '.join(map(repr, WEIGHTINGS))}")
    return ghuber(float(option(config, "train.ghuber_power", 0.25))) if name == "ghuber" else WEIGHTINGS[name]


def awm_kl(config, key: str) -> str:
    """The library KL of AWM's ``train.kl_weight`` / ``train.kl_ema_weight`` (``key``)."""
    name = option(config, f"train.{key}", "Uniform")
    if name not in KL_WEIGHTS:
        raise ValueError(f"config.train.{key} {name!r}: expected one of {', '.join(map(repr, KL_WEIGHTS))}")
    return KL_WEIGHTS[name]


def awm_loss(sample: Dict[str, torch.Tensor], config, model_output: torch.Tensor,
             model_output_ref: Optional[torch.Tensor] = None,
             model_output_ema: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """AWM's loss block (module docstring) on the fused kernels.

    Args:
        sample: AWM's training batch: "advantages" [B, T'], "old_log_probs" [T, B],
            "timesteps" [T B, 1, 1, 1], "clean_latents" and "train_random_noise" [T B, *S].
        config: AWM's config.
        model_output: v [T B, *S] from ``compute_log_prob_awm`` (with gradient).
        model_output_ref: v_ref [T B, *S] (adapters disabled); needed when train.beta > 0.
        model_output_ema: v_ema [T B, *S] (the "ema" adapter); needed when train.ema_beta > 0.
    Returns:
        (loss, step_info) with step_info the detached logged values under AWM's keys.
    Raises:
        ValueError naming the config key for an option without a counterpart, and
        ValueError / TypeError from :func:`elbo_kernels.policy_loss`, naming the argument.
    """
    if option(config, "train.loss_type", "exp_first") != "exp_first":
        raise ValueError(f"config.train.loss_type {option(config, 'train.loss_type', None)!r}: only 'exp_first' "
                         "(one ratio per draw) is a per-draw objective")
    draws = option(config, "train.train_timesteps", None) or sample["old_log_probs"].shape[0]
    adv_clip_max = float(option(config, "train.adv_clip_max", 5.0))
    advantages = sample["advantages"][:, 0].clamp(-adv_clip_max, adv_clip_max)
    advantage_max = option(config, "train.advantage_max", None)
    if advantage_max is not None:
        advantages = advantages / adv_clip_max * advantage_max
    beta, ema_beta = float(option(config, "train.beta", 0.0)), float(option(config, "train.ema_beta", 0.0))
    dtype = model_output.dtype
    loss, stats = policy_loss(
        model_output, None, model_output_ref if beta > 0 else None, sample["clean_latents"].to(dtype),
        sample["train_random_noise"].to(dtype), sample["timesteps"].reshape(-1).to(dtype),
        advantages.repeat(draws).to(dtype), elbo_old=sample["old_log_probs"].reshape(-1).to(dtype),
        objective="grpo", weighting=awm_weighting(config), kl=awm_kl(config, "kl_weight"), beta=beta,
        clip_range=float(option(config, "train.clip_range", 1e-4)), adv_clip_max=adv_clip_max,
        v_anchor=model_output_ema if ema_beta > 0 else None, anchor_beta=ema_beta,
        anchor_kl=awm_kl(config, "kl_ema_weight"), backend=option(config, "train.backend", "auto"),
    )
    info = {"clipfrac": stats["clipfrac"], "policy_loss": stats["policy_loss"]}
    if beta > 0:
        info["kl_loss"] = stats["kl"]
    if ema_beta > 0:
        info["ema_kl_loss"] = stats["kl_anchor"]
    return loss, info
