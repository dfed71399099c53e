"""The advantage-weighted policy loss on ELBO estimates: one fused pass, every objective.

    loss = mean_n objective_n + beta * mean_n k_n + anchor_beta * mean_n k_anchor_n

with the objective table in objectives/table.py and the KL terms in
objectives/kl.py. The big tensors are read once, by the residual-sums op; all
that follows is arithmetic on [N] vectors, and the gradient with respect to v is
one elementwise pass (ops/residual_sums.py).

The anchor term (AWM's KL to an EMA of the policy, ``v_anchor``) is a velocity
distance, mean_D (v - v_anchor)^2 per draw: it is computed in the same call but
outside the fused op, so it reads v and v_anchor once more (2 N D E bytes) and
adds one elementwise pass to the backward. Fusing it as a residual-sums column
would save that pass.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from .._validation import (
    check_choice,
    check_finite,
    check_finite_through,
    check_per_draw,
    check_positive,
    require_all,
    row_count,
    values_range,
)
from ..backends import resolve_backend
from ..estimators.elbo import Weighting, elbo_from_sums, validate_draws, weighting_record
from ..ops._base import accumulation_dtype
from ..ops.noise import NoiseSeed
from ..ops.residual_sums import COLUMN, residual_sums
from .kl import KL_ESTIMATORS, VELOCITY_KLS, kl_term
from .table import OBJECTIVES, Draws, Objective, objective_record


def policy_loss(
    v: torch.Tensor,
    v_old: Optional[torch.Tensor],
    v_ref: Optional[torch.Tensor],
    x0: torch.Tensor,
    noise: Union[torch.Tensor, NoiseSeed],
    t,
    advantages,
    *,
    objective: Union[str, Objective] = "pepg",
    weighting: Union[str, Weighting] = "adaptive",
    kl: Optional[str] = "girsanov",
    beta: float = 1e-4,
    clip_range: float = 1e-3,
    adv_clip_max: float = 5.0,
    nft_beta: float = 1.0,
    v_anchor: Optional[torch.Tensor] = None,
    anchor_beta: float = 0.0,
    anchor_kl: str = "girsanov",
    elbo_old: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Policy loss on per-draw ELBO estimates, with its statistics.

    Args:
        v: current-policy velocities [N, *S] at (x_t, t); gradients flow to v only.
        v_old: old-policy velocities at the same x_t [N, *S] (no gradient). May be None for the
            objectives whose record says needs_old_policy=False ("epg_noratio", "awm"), or with elbo_old.
        v_ref: reference-model velocities [N, *S] (no gradient); required when ``kl`` is set and
            beta > 0, ignored otherwise.
        x0: [N, *S] or [B, *S] with N = B * K (draw n uses x0[n // K], not copied).
        noise: eps [N, *S] that made x_t, or NoiseSeed(seed, offset) to regenerate it in-kernel.
        t: [N] timesteps in (0, 1].
        advantages: [N] per draw; optimality probabilities in [0, 1] for the objectives whose
            record says advantage_kind="probability" ("nft").
        objective: one of epg, epg_noratio, pepg, pepg_noratio, par, par_noratio, grpo, nft, awm (a name
            of OBJECTIVES, or its record, e.g. resolved once by a training loop).
        weighting: simple, t_squared, t_linear, path_kl, adaptive or ghuber (power 0.25), or a record
            such as ``ghuber(0.5)`` (nft uses it for its x0-space losses L+-; "t" is the deprecated
            name of t_squared).
        kl: girsanov, girsanov_sde, kl1, kl2, kl3, kl1_iw, kl2_iw, kl3_iw, or None for no KL term.
        beta: KL weight (>= 0).
        clip_range: c of the grpo clip, and the threshold of clipfrac (> 0).
        adv_clip_max: M, the advantage clamp of grpo and awm and the scale of nft (> 0).
        nft_beta: g, the DiffusionNFT blend (> 0).
        v_anchor: velocities of an anchor policy at the same x_t [N, *S] (no gradient), e.g. AWM's
            EMA of the policy; required when anchor_beta > 0, ignored otherwise.
        anchor_beta: weight of the anchor KL (>= 0; 0 = no anchor term).
        anchor_kl: the anchor's KL, "girsanov" (mean_D (v - v_anchor)^2; AWM's kl_ema_weight
            "Uniform") or "girsanov_sde" (that over 2 s(t)^2; AWM's "ELBO").
        elbo_old: the old policy's ELBOs e_old [N] (no gradient), in place of v_old, when they were
            computed earlier under the same weighting and draws (AWM records them in a no-grad pass
            before its updates). Not with v_old, nor with the objectives that blend velocities ("nft").
        backend: "auto", "torch", "cpu", "cuda" or "triton".
    Returns:
        (loss, stats): loss a 0-dim tensor (float32; float64 for float64 inputs); stats a dict of
        detached 0-dim tensors: policy_loss, kl, kl_anchor (0 without an anchor), approx_kl (0.5 mean l^2), clipfrac
        (mean |rho - 1| > c), clipfrac_gt_one, clipfrac_lt_one, ratio_mean, ratio_max,
        elbo_mean, elbo_old_mean.
    Raises:
        TypeError / ValueError naming the argument for mismatched shapes, dtypes or devices,
        t outside (0, 1], NaN/Inf in any input or advantage, an empty batch, or an unknown
        objective / weighting / kl / backend.
    """
    record = objective_record(objective)
    weighting = weighting_record(weighting)
    check_choice("kl", kl, KL_ESTIMATORS + (None,))
    beta = check_positive("beta", beta, allow_zero=True)
    clip_range = check_positive("clip_range", clip_range)
    adv_clip_max = check_positive("adv_clip_max", adv_clip_max)
    nft_beta = check_positive("nft_beta", nft_beta)
    anchor_beta = check_positive("anchor_beta", anchor_beta, allow_zero=True)
    check_choice("anchor_kl", anchor_kl, VELOCITY_KLS)
    use_anchor = anchor_beta > 0
    if use_anchor and v_anchor is None:
        raise ValueError(f"v_anchor is required for anchor_beta={anchor_beta} > 0 (pass anchor_beta=0 to disable)")
    v_anchor = v_anchor if use_anchor else None
    if elbo_old is not None:
        if v_old is not None:
            raise ValueError("pass v_old or elbo_old (the old policy's velocities or its ELBOs), not both")
        if record.blend:
            raise ValueError(f"elbo_old cannot stand in for v_old with objective {record.name!r}: it blends the "
                             "old velocities")
        elbo_old = check_per_draw("elbo_old", elbo_old, v.shape[0], v.device)
        check_finite("elbo_old", elbo_old)
    elif v_old is None and record.needs_old_policy:
        free = tuple(name for name, other in OBJECTIVES.items() if not other.needs_old_policy)
        raise ValueError(f"v_old is required for objective {record.name!r}, or elbo_old (only {free} work "
                         "without either)")
    use_kl = kl is not None and beta > 0
    if use_kl and v_ref is None:
        raise ValueError(f"v_ref is required for kl={kl!r} with beta={beta} > 0 (pass kl=None or beta=0 to disable)")
    v_ref = v_ref if use_kl else None
    _, t = validate_draws(v, x0, noise, t, v_old=v_old, v_ref=v_ref, v_anchor=v_anchor)
    advantages = check_per_draw("advantages", advantages, v.shape[0], v.device)
    check_finite("advantages", advantages)
    if record.advantage_kind == "probability":
        require_all((advantages >= 0) & (advantages <= 1),
                    f"advantages for objective {record.name!r} are optimality probabilities in [0, 1] "
                    "(group_advantages(mode='nft') makes them)", lambda: values_range(advantages))

    backend = resolve_backend(backend, v.device)
    blend = record.blend
    sums = residual_sums(v, x0, noise, v_old, v_ref, nft_beta=nft_beta if blend else 0.0, backend=backend)
    check_finite_through(sums, "the residual sums", v=v, v_old=v_old, v_ref=v_ref, x0=x0, noise=noise)
    d = row_count(v.shape)
    e_theta = elbo_from_sums(sums, t, d, weighting, "S")
    if v_old is not None:
        e_old = elbo_from_sums(sums, t, d, weighting, "O")
    else:
        e_old = e_theta.detach() if elbo_old is None else elbo_old.detach().to(e_theta.dtype)
    draws = Draws(
        e_theta=e_theta,
        e_old=e_old,
        advantages=advantages.to(e_theta.dtype),
        clip_range=clip_range,
        adv_clip_max=adv_clip_max,
        nft_beta=nft_beta,
        nft_positive=-elbo_from_sums(sums, t, d, weighting, "P") if blend else None,
        nft_negative=-elbo_from_sums(sums, t, d, weighting, "M") if blend else None,
    )
    per_draw = record(draws)
    policy = per_draw.mean()
    if use_kl:
        k = kl_term(
            kl,
            girsanov=sums[:, COLUMN["K2"]] / d,
            e_theta=e_theta,
            e_ref=elbo_from_sums(sums, t, d, weighting, "R"),
            ratio=draws.ratio,
            t=t,
        ).mean()
        loss = policy + beta * k
    else:
        k = torch.zeros((), dtype=policy.dtype, device=policy.device)
        loss = policy
    if use_anchor:
        acc = accumulation_dtype(v.dtype)
        distance = (v.to(acc) - v_anchor.detach().to(acc)).reshape(v.shape[0], -1).square().mean(1)
        check_finite_through(distance, "the anchor distance mean_D (v - v_anchor)^2", v=v, v_anchor=v_anchor)
        k_anchor = kl_term(anchor_kl, girsanov=distance, t=t).mean()
        loss = loss + anchor_beta * k_anchor
    else:
        k_anchor = torch.zeros((), dtype=policy.dtype, device=policy.device)
    return loss, _stats(draws, policy, k, k_anchor)


def _stats(draws: Draws, policy: torch.Tensor, k: torch.Tensor,
           k_anchor: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    with torch.no_grad():
        l = draws.log_ratio  # noqa: E741
        ratio = torch.exp(l)
        c = draws.clip_range
        return {
            "policy_loss": policy.detach(),
            "kl": k.detach(),
            "kl_anchor": (torch.zeros_like(k) if k_anchor is None else k_anchor).detach(),
            "approx_kl": 0.5 * l.square().mean(),
            "clipfrac": ((ratio - 1).abs() > c).to(ratio.dtype).mean(),
            "clipfrac_gt_one": (ratio > 1 + c).to(ratio.dtype).mean(),
            "clipfrac_lt_one": (ratio < 1 - c).to(ratio.dtype).mean(),
            "ratio_mean": ratio.mean(),
            "ratio_max": ratio.max(),
            "elbo_mean": draws.e_theta.detach().mean(),
            "elbo_old_mean": draws.e_old.mean(),
        }


def log_prob_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    objective: str = "grpo",
    clip_range: float = 1e-3,
    adv_clip_max: float = 5.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The objective table on any per-draw log-probability estimate (e.g. FlowGRPO's SDE steps).

    log_prob plays e_theta (it carries the gradient), old_log_prob plays e_old.
    Returns (mean per-draw objective, stats as in :func:`policy_loss`, with kl = 0).
    Raises ValueError for an unknown objective or one whose record says blend=True ("nft": it
    needs the blended velocities).
    """
    check_choice("objective", objective, tuple(name for name, record in OBJECTIVES.items() if not record.blend))
    draws = Draws(
        e_theta=log_prob,
        e_old=old_log_prob.detach(),
        advantages=advantages.to(log_prob.dtype),
        clip_range=check_positive("clip_range", clip_range),
        adv_clip_max=check_positive("adv_clip_max", adv_clip_max),
        nft_beta=1.0,
    )
    policy = OBJECTIVES[objective](draws).mean()
    return policy, _stats(draws, policy, torch.zeros((), dtype=policy.dtype, device=policy.device))
