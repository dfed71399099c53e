"""Drop-ins for existing RL-for-diffusion codebases.

- :mod:`elbo_kernels.integrations.flow_grpo`: FlowGRPO's ``sde_step_with_logprob``,
  ``compute_log_prob`` (trajectory or ELBO estimator), the loss block and the stat tracker
  (docs/flow_grpo.md; verified by ``flow_grpo_check``).
- :mod:`elbo_kernels.integrations.diffusion_nft`: DiffusionNFT's loss block as ``nft_loss``
  (docs/diffusion_nft.md; verified by ``diffusion_nft_check``).
- :mod:`elbo_kernels.integrations.awm`: AWM's loss block as ``awm_loss`` (docs/awm.md; verified
  by ``awm_check``).
"""

__all__ = ["awm", "diffusion_nft", "flow_grpo"]


def __getattr__(name):
    if name in __all__:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
