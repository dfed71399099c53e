"""Policy objectives and KL terms on ELBO estimates (docs/design.md section 2)."""

from .kl import KL_ESTIMATORS
from .policy_loss import log_prob_policy_loss, policy_loss
from .table import OBJECTIVES, Objective, objective_record

__all__ = ["KL_ESTIMATORS", "OBJECTIVES", "Objective", "log_prob_policy_loss", "objective_record", "policy_loss"]
