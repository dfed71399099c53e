"""KL regularisation to the reference model, per draw (added to the loss as beta * mean(k)).

    girsanov   k = mean_D (v - v_ref)^2             (path-space KL of the two SDEs, up to a
                                                     time weight; the study's default; AWM's
                                                     kl_weight "Uniform")
    girsanov_sde k = mean_D (v - v_ref)^2 / (2 s(t)^2),  s(t) = 0.7 sqrt(t / (1 - min(t, 0.99)))
                                                    (AWM's kl_weight "ELBO": the Girsanov rate
                                                     of FlowGRPO's SDE at noise level 0.7)
    kl1        k = d                                 d = e_theta - e_ref, the ELBO log-ratio
    kl2        k = d^2 / 2                           to the reference (Schulman's k1, k2, k3
    kl3        k = exp(-d) - 1 + d                   estimators of KL(pi_theta || pi_ref))
    kl1_iw, kl2_iw, kl3_iw: the same, importance-weighted by rho = exp(e_theta - e_old)
                            (stop-gradient) because draws come from the old policy.
"""

from __future__ import annotations

from typing import Optional

import torch

KL_ESTIMATORS = ("girsanov", "girsanov_sde", "kl1", "kl2", "kl3", "kl1_iw", "kl2_iw", "kl3_iw")
# The KL terms that need velocities only (no ELBO of the reference): the ones an anchor
# (policy_loss's v_anchor) can use.
VELOCITY_KLS = ("girsanov", "girsanov_sde")
SDE_KL_NOISE_LEVEL = 0.7  # AWM's fixed eta in its "ELBO" KL weight
SDE_KL_T_CAP = 0.99  # AWM clamps t there so that s(1) is finite


def sde_kl_variance(t: torch.Tensor) -> torch.Tensor:
    """s(t)^2 = eta^2 t / (1 - min(t, 0.99)) with eta = 0.7: AWM's "ELBO" KL divides by 2 s(t)^2."""
    return SDE_KL_NOISE_LEVEL ** 2 * t / (1 - t.clamp(max=SDE_KL_T_CAP))


def kl_term(
    kl: str,
    *,
    girsanov: Optional[torch.Tensor] = None,
    e_theta: Optional[torch.Tensor] = None,
    e_ref: Optional[torch.Tensor] = None,
    ratio: Optional[torch.Tensor] = None,
    t: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-draw KL k [N] for estimator ``kl`` (one of KL_ESTIMATORS).

    girsanov: mean_D (v - v_ref)^2 [N]; t [N] is read by "girsanov_sde" only.
    """
    if kl == "girsanov":
        return girsanov
    if kl == "girsanov_sde":
        return girsanov / (2 * sde_kl_variance(t.to(girsanov.dtype)))
    d = e_theta - e_ref
    base = kl.removesuffix("_iw")
    if base == "kl1":
        k = d
    elif base == "kl2":
        k = 0.5 * d.square()
    else:
        k = torch.expm1(-d) + d
    return ratio.detach() * k if kl.endswith("_iw") else k
