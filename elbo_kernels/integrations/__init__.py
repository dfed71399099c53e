"""Drop-ins for existing RL-for-diffusion codebases.

- :mod:`elbo_kernels.integrations.flow_grpo`: FlowGRPO's ``sde_step_with_logprob``,
  ``compute_log_prob`` (trajectory or ELBO estimator), the loss block and the stat tracker.
"""

__all__ = ["flow_grpo"]


def __getattr__(name):
    if name == "flow_grpo":
        import importlib

        return importlib.import_module(".flow_grpo", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
