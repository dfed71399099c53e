"""Policy objectives and KL terms on ELBO estimates (docs/design.md section 2)."""

from .kl import KL_ESTIMATORS
from .policy_loss import log_prob_policy_loss, policy_loss
from .table import OBJECTIVES

__all__ = ["KL_ESTIMATORS", "OBJECTIVES", "log_prob_policy_loss", "policy_loss"]
