"""elbo_kernels: fused kernels for RL fine-tuning of diffusion and flow models.

    import elbo_kernels as ek
    e = ek.elbo(v, x0, noise, t)                                   # per-draw ELBO estimates
    loss, stats = ek.policy_loss(v, v_old, v_ref, x0, noise, t, advantages)
    log_prob, prev_mean, std = ek.sde_step_log_prob(v, x, x_prev, sigma, sigma_prev)
    advantages = ek.group_advantages(rewards, group_ids, mode="exact", scale=0.1)
    ek.available_backends()
"""

import importlib

# The public names and the submodule each lives in. They are imported on first use (PEP 562), so
# that `import elbo_kernels` and `elbo-kernels --help` do not pay for importing torch; the first
# attribute access imports the submodule, and the name is then an ordinary module attribute.
_PUBLIC = {
    "ADVANTAGE_MODES": "advantages",
    "PerPromptStatTracker": "advantages",
    "group_advantages": "advantages",
    "BACKENDS": "backends",
    "BackendStatus": "backends",
    "available_backends": "backends",
    "NOISE_MODES": "estimators",
    "SDE_TYPES": "estimators",
    "TIMESTEP_SAMPLERS": "estimators",
    "WEIGHTINGS": "estimators",
    "elbo": "estimators",
    "ghuber": "estimators",
    "noising": "estimators",
    "sample_noise": "estimators",
    "sample_timesteps": "estimators",
    "sde_step_coefficients": "estimators",
    "sde_step_log_prob": "estimators",
    "KL_ESTIMATORS": "objectives",
    "OBJECTIVES": "objectives",
    "policy_loss": "objectives",
    "NoiseSeed": "ops.noise",
    "async_value_checks": "_validation",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule, e.g. elbo_kernels.backends
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


__version__ = "0.1.0"

__all__ = [
    "ADVANTAGE_MODES",
    "BACKENDS",
    "BackendStatus",
    "KL_ESTIMATORS",
    "NOISE_MODES",
    "NoiseSeed",
    "OBJECTIVES",
    "PerPromptStatTracker",
    "SDE_TYPES",
    "TIMESTEP_SAMPLERS",
    "WEIGHTINGS",
    "async_value_checks",
    "available_backends",
    "elbo",
    "ghuber",
    "group_advantages",
    "noising",
    "policy_loss",
    "sample_noise",
    "sample_timesteps",
    "sde_step_coefficients",
    "sde_step_log_prob",
]
