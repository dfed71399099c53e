"""KL regularisation to the reference model, per draw (added to the loss as beta * mean(k)).

    girsanov   k = mean_D (v - v_ref)^2             (path-space KL of the two SDEs, up to a
                                                     time weight; the study's default)
    kl1        k = d                                 d = e_theta - e_ref, the ELBO log-ratio
    kl2        k = d^2 / 2                           to the reference (Schulman's k1, k2, k3
    kl3        k = exp(-d) - 1 + d                   estimators of KL(pi_theta || pi_ref))
    kl1_iw, kl2_iw, kl3_iw: the same, importance-weighted by rho = exp(e_theta - e_old)
                            (stop-gradient) because draws come from the old policy.
"""

from __future__ import annotations

from typing import Optional

import torch

KL_ESTIMATORS = ("girsanov", "kl1", "kl2", "kl3", "kl1_iw", "kl2_iw", "kl3_iw")


def kl_term(
    kl: str,
    *,
    girsanov: Optional[torch.Tensor] = None,
    e_theta: Optional[torch.Tensor] = None,
    e_ref: Optional[torch.Tensor] = None,
    ratio: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-draw KL k [N] for estimator ``kl`` (one of KL_ESTIMATORS)."""
    if kl == "girsanov":
        return girsanov
    d = e_theta - e_ref
    base = kl.removesuffix("_iw")
    if base == "kl1":
        k = d
    elif base == "kl2":
        k = 0.5 * d.square()
    else:
        k = torch.expm1(-d) + d
    return ratio.detach() * k if kl.endswith("_iw") else k
