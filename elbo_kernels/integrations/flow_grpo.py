"""Drop-ins for FlowGRPO's ``scripts/train_sd3.py``: same signatures, fused kernels, an ELBO mode.

    from elbo_kernels.integrations.flow_grpo import (
        sde_step_with_logprob,     # FlowGRPO's SDE step + log-prob, on the fused SDE-step kernel
        compute_log_prob,          # per timestep j; config.train.estimator = "trajectory" | "elbo"
        prepare_elbo_samples,      # ELBO mode: seeds + old-policy ELBOs, once per epoch after sampling
        compute_elbo,              # K timesteps of a sample batch in one transformer forward
        grpo_loss,                 # the loss block of FlowGRPO's timestep loop, with its logged statistics
        PerPromptStatTracker,      # FlowGRPO's tracker interface (elbo_kernels.PerPromptStatTracker)
    )

Sample dicts are FlowGRPO's: "prompt_embeds" [B, L, C], "pooled_prompt_embeds" [B, P],
"timesteps" [B, T] (the scheduler's timesteps, sigma * 1000), "latents" [B, T, *S] (before
step j), "next_latents" [B, T, *S] (after step j), "log_probs" [B, T], "advantages" [B, T].

ELBO mode (``config.train.estimator = "elbo"``): log pi is the ELBO estimate of the final
latent ``sample["next_latents"][:, -1]`` at one draw (t, eps) per (sample, j):

    t   = the sample's own grid, sample["timesteps"][b] / 1000, in a random order per sample
          (the study's "grid" timestep sampler): draw j uses position perm_b[j mod T];
    eps = Philox noise from NoiseSeed(seed_b, offset = j * D)  (elbo_kernels.ops.noise).

Both depend only on the sample's ``"elbo_seeds"`` entry and j, so the old policy
(recorded once by :func:`prepare_elbo_samples`, right after sampling, into
``sample["log_probs"]``) and the current policy (``compute_log_prob`` during training) see
the same x_t, even after FlowGRPO shuffles and re-batches its samples: "elbo_seeds" is a
[B] tensor and travels with every other key. The trajectory is not needed (and is dropped
by default), so rollouts may use any sampler.

In ELBO mode ``compute_log_prob`` returns (x0, e_theta, x0_hat, t): FlowGRPO's KL line,
mean((mean - mean_ref)^2) / (2 std^2), then evaluates to 0.5 * mean((v - v_ref)^2), half
the Girsanov KL term of the library's policy loss (elbo_kernels/objectives/).

Classifier-free guidance (``config.train.cfg``, on in every FlowGRPO SD3 config):

- trajectory mode: v = v_uncond + g (v_text - v_uncond) with the unconditional branch a
  stop-gradient, as in FlowGRPO, so the policy gradient is g * d(v_text). One forward of
  cat([negative, positive]).
- ELBO mode: the ELBO is taken on the conditional velocity v_text alone, whatever
  ``config.train.cfg`` says; only the positive half of cat([negative, positive]) embeds is
  used. The policy being trained is the conditional model: the study trains its ELBO recipe
  without CFG, the guided velocity is no model's velocity of any distribution (at g = 4.5 its
  residual is dominated by g (v_text - v_uncond), which no data term explains), and it costs
  half the transformer rows. Rollouts may still sample with CFG.

Config keys read (all optional; FlowGRPO's own keys keep their meaning):

    train.estimator     "trajectory" (default) | "elbo"
    train.objective     "grpo" (default: FlowGRPO's PPO clip) or any ratio objective ("pepg", ...)
    train.weighting     "adaptive" (default) | "simple" | "t_squared" | "t_linear" | "path_kl" | "ghuber"   (ELBO mode;
                        train.ghuber_power, 0.25, for "ghuber")
    train.backend       "auto" (default) | "torch" | "cpu" | "cuda" | "triton"
    train.cfg, train.beta, train.clip_range (1e-4), train.adv_clip_max (5.0),
    train.timestep_fraction (1.0), sample.num_steps, sample.noise_level (0.7),
    sample.sde_type ("sde"), sample.guidance_scale (1.0)
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..advantages import PerPromptStatTracker as _Tracker
from ..backends import resolve_backend
from ..estimators import elbo as _elbo
from ..estimators import noising, sde_step_coefficients, sde_step_log_prob, weighting_record
from ..objectives import log_prob_policy_loss
from ..ops.noise import NoiseSeed, generate_noise
from ..sampling.guidance import apply_guidance
from ._config import option

ESTIMATORS = ("trajectory", "elbo")
SEED_KEY = "elbo_seeds"


# --- config access ------------------------------------------------------------------------------------
_option = option


def _weighting(config):
    """config.train.weighting ("adaptive"), with config.train.ghuber_power (0.25) for "ghuber"."""
    name = _option(config, "train.weighting", "adaptive")
    return weighting_record(name, _option(config, "train.ghuber_power", None) if name == "ghuber" else None)


def estimator(config) -> str:
    """``config.train.estimator``, "trajectory" when the key is absent (FlowGRPO's configs lack it).

    Use it in the training script instead of reading the key, which ml_collections refuses
    with an AttributeError when it was never added: ``if estimator(config) == "elbo": ...``.

    Raises:
        ValueError: a value other than "trajectory" or "elbo".
    """
    value = _option(config, "train.estimator", "trajectory")
    if value not in ESTIMATORS:
        raise ValueError(f"config.train.estimator must be one of {ESTIMATORS}, got {value!r}")
    return value


def train_timesteps(config, num_steps: int) -> int:
    """FlowGRPO's number of trained timesteps, int(sample.num_steps * train.timestep_fraction)."""
    fraction = float(_option(config, "train.timestep_fraction", 1.0))
    steps = int(_option(config, "sample.num_steps", num_steps) * fraction)
    if not 1 <= steps <= num_steps:
        raise ValueError(f"config.sample.num_steps * config.train.timestep_fraction must give between 1 and "
                         f"{num_steps} trained timesteps (the sample's T), got {steps}")
    return steps


# --- the SDE step -------------------------------------------------------------------------------------
def sde_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: Optional[torch.Tensor] = None,
    generator=None,
    sde_type: str = "sde",
    *,
    backend: str = "auto",
):
    """FlowGRPO's ``sde_step_with_logprob`` (same signature and outputs) on the fused SDE-step kernel.

    Args:
        scheduler: a diffusers FlowMatchEulerDiscreteScheduler after ``set_timesteps`` (its
            ``timesteps`` locate each row's step; ``sigmas`` give sigma, sigma_prev and sigmas[1]).
        model_output: velocity [B, *S] (any float dtype; computed in float32).
        timestep: [B] scheduler timesteps (or one value, 0-d or [1], for the whole batch).
        sample: x at ``timestep`` [B, *S].
        noise_level: eta (>= 0). 0 is FlowGRPO's deterministic step, which its evaluation uses:
            prev_sample = prev_sample_mean = sample + dt * model_output (Euler), std_dev_t = 0,
            and log_prob NaN for "sde" (no density; FlowGRPO's formula gives 0 / 0 there too).
            The noise is still drawn, so ``generator`` advances as in FlowGRPO.
        prev_sample: the next latent [B, *S]; None draws it (prev_mean + step std * N(0, I) from
            ``generator``, a torch.Generator or a list of B, as diffusers' ``randn_tensor`` takes).
        sde_type: "sde" (default) or "cps". Not in FlowGRPO's SD3 function at commit ac4c86e
            (later FlowGRPO versions add it); FlowGRPO's callers never pass it.
        backend: kernel backend ("auto", "torch", "cpu", "cuda", "triton").
    Returns:
        (prev_sample [B, *S] float32, log_prob [B] float32 (mean over the latent), prev_sample_mean
        [B, *S] float32 (differentiable in model_output), std_dev_t [B, 1, ..., 1] float32).
    Raises:
        ValueError: a timestep not on the scheduler's grid, bad shapes, or an unknown sde_type / backend.
    """
    from diffusers.utils.torch_utils import randn_tensor

    v = model_output.float()
    x = sample.float()
    n = x.shape[0]
    timestep = torch.as_tensor(timestep, device=scheduler.timesteps.device)
    if timestep.numel() == 1:  # FlowGRPO's pipeline passes t.unsqueeze(0) for the whole batch
        timestep = timestep.reshape(()).expand(n)
    if timestep.shape != (n,):
        raise ValueError(f"timestep must be one value or [B] = [{n}], got shape {tuple(timestep.shape)}")
    try:
        index = torch.tensor([scheduler.index_for_timestep(t) for t in timestep.to(scheduler.timesteps.dtype)])
    except IndexError:
        raise ValueError(f"timestep values {timestep.tolist()[:4]} are not on the scheduler's grid "
                         f"{scheduler.timesteps.tolist()[:4]}...; call scheduler.set_timesteps first") from None
    sigmas = scheduler.sigmas.to(device=x.device, dtype=torch.float32)
    sigma, sigma_prev = sigmas[index.to(x.device)], sigmas[index.to(x.device) + 1]
    sigma_max = float(sigmas[1]) if sde_type == "sde" else None
    view = (n,) + (1,) * (x.dim() - 1)
    if prev_sample is None:
        coef, _, step_std = sde_step_coefficients(sigma, sigma_prev, noise_level=noise_level, sde_type=sde_type,
                                                  sigma_max=sigma_max)
        coef = coef.to(torch.float32)
        mean = coef[:, 0].reshape(view) * x + coef[:, 1].reshape(view) * v.detach()
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        prev_sample = mean + step_std.to(torch.float32).reshape(view) * noise
    prev_sample = prev_sample.float()
    log_prob, prev_mean, std = sde_step_log_prob(
        v, x, prev_sample.detach(), sigma, sigma_prev, noise_level=noise_level, sde_type=sde_type,
        sigma_max=sigma_max, backend=backend,
    )
    return prev_sample, log_prob, prev_mean, std.to(torch.float32).reshape(view)


# --- transformer calls ----------------------------------------------------------------------------------
def _velocity(transformer, latents: torch.Tensor, timesteps: torch.Tensor, embeds, pooled_embeds, config):
    """The transformer's velocity as FlowGRPO's compute_log_prob calls it.

    With config.train.cfg, embeds = cat([negative, positive]) and one forward of both halves;
    the unconditional branch is a stop-gradient (FlowGRPO's convention), so the gradient is
    guidance_scale * d(v_text).
    """
    if _option(config, "train.cfg", False):
        out = transformer(hidden_states=torch.cat([latents] * 2), timestep=torch.cat([timesteps] * 2),
                          encoder_hidden_states=embeds, pooled_projections=pooled_embeds, return_dict=False)[0]
        uncond, text = out.chunk(2)
        return apply_guidance(text, uncond.detach(), _option(config, "sample.guidance_scale", 1.0))
    return transformer(hidden_states=latents, timestep=timesteps, encoder_hidden_states=embeds,
                       pooled_projections=pooled_embeds, return_dict=False)[0]


def _conditional(name: str, embeds: torch.Tensor, batch: int, config) -> torch.Tensor:
    """The positive prompt embeddings [B, ...]: embeds itself, or the positive half of FlowGRPO's
    cat([negative, positive]) when config.train.cfg is set (the ELBO takes no guidance)."""
    if embeds.shape[0] == batch:
        return embeds
    if embeds.shape[0] == 2 * batch and _option(config, "train.cfg", False):
        return embeds[batch:]
    raise ValueError(f"{name} must have B = {batch} rows, or 2B = {2 * batch} as cat([negative, positive]) with "
                     f"config.train.cfg, got {embeds.shape[0]}")


# --- ELBO draws -------------------------------------------------------------------------------------------
def elbo_draws(sample: Dict[str, torch.Tensor], columns: Sequence[int], *, num_train_timesteps: int = 1000,
               backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """The deterministic draws (t, eps) of each sample for the given j's (module docstring).

    Args:
        sample: needs "elbo_seeds" [B] int64, "timesteps" [B, T] and "next_latents" [B, T', *S].
        columns: the K values of j.
    Returns:
        t [B, K] float32 in (0, 1] and eps [B * K, *S] float32 (rows ordered b-major, as ek.elbo expects).
    Raises:
        KeyError: "elbo_seeds" missing (run :func:`prepare_elbo_samples` first).
    """
    if SEED_KEY not in sample:
        raise KeyError(f"sample has no {SEED_KEY!r}: call prepare_elbo_samples(...) once after sampling "
                       f"(see docs/flow_grpo.md) before compute_log_prob in ELBO mode")
    seeds = sample[SEED_KEY].tolist()
    grid = sample["timesteps"].float() / num_train_timesteps
    b, steps = grid.shape
    shape = tuple(sample["next_latents"].shape[2:])
    device = sample["next_latents"].device
    size = int(np.prod(shape))
    noise_backend = resolve_backend(backend, device)
    t = torch.empty(b, len(columns), dtype=torch.float32)
    eps = []
    for row, seed in enumerate(seeds):
        order = torch.randperm(steps, generator=torch.Generator().manual_seed(int(seed)))
        for col, j in enumerate(columns):
            t[row, col] = grid[row, order[j % steps]]
            eps.append(generate_noise((1,) + shape, NoiseSeed(int(seed), int(j) * size), device=device,
                                      backend=noise_backend))
    return t.to(device), torch.cat(eps)


def compute_elbo(transformer, pipeline, sample: Dict[str, torch.Tensor], embeds: torch.Tensor,
                 pooled_embeds: torch.Tensor, config, columns: Optional[Sequence[int]] = None, *,
                 micro_batch: int = 0, return_x0_hat: bool = False):
    """ELBO estimates of the final latents at K draws per sample, in one transformer forward.

    The velocity is the conditional one (no CFG; module docstring), so each draw is one row.

    Args:
        transformer, pipeline, sample, embeds, pooled_embeds, config: as FlowGRPO's compute_log_prob
            (embeds [B, ...], or [2B, ...] = cat([negative, positive]) with config.train.cfg, of
            which the positive half is used).
        columns: the j's to evaluate (default: all T timesteps of the sample).
        micro_batch: rows per forward (0 = all B * K rows in one forward).
        return_x0_hat: also return x0_hat = x_t - t v [B, K, *S].
    Returns:
        e [B, K] float32 (differentiable when called with grad), plus x0_hat when asked.
        Weighting: config.train.weighting (default "adaptive").
    Raises:
        KeyError: "elbo_seeds" missing. ValueError: bad weighting / micro_batch / embeds rows.
    """
    x0 = sample["next_latents"][:, -1]
    b = x0.shape[0]
    columns = list(range(sample["timesteps"].shape[1])) if columns is None else list(columns)
    k = len(columns)
    scale = int(pipeline.scheduler.config.num_train_timesteps)
    backend = _option(config, "train.backend", "auto")
    t, eps = elbo_draws(sample, columns, num_train_timesteps=scale, backend=backend)
    t = t.reshape(-1)
    x0_float = x0.float()
    x_t = noising(x0_float, t, eps, backend=backend)
    hidden = _conditional("embeds", embeds, b, config).repeat_interleave(k, dim=0)
    pooled = _conditional("pooled_embeds", pooled_embeds, b, config).repeat_interleave(k, dim=0)
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 0:
        raise ValueError(f"micro_batch must be an int >= 0, got {micro_batch!r}")
    step = micro_batch or b * k
    dtype = x0.dtype
    velocities = []
    for lo in range(0, b * k, step):
        rows = slice(lo, min(lo + step, b * k))
        velocities.append(transformer(hidden_states=x_t[rows].to(dtype), timestep=(t[rows] * scale).to(dtype),
                                      encoder_hidden_states=hidden[rows], pooled_projections=pooled[rows],
                                      return_dict=False)[0])
    v = torch.cat(velocities).float()
    e = _elbo(v, x0_float, eps, t, weighting=_weighting(config), backend=backend)
    if return_x0_hat:
        view = (-1,) + (1,) * (x0.dim() - 1)
        x0_hat = (x_t - t.reshape(view) * v).reshape((b, k) + tuple(x0.shape[1:]))
        return e.reshape(b, k), x0_hat
    return e.reshape(b, k)


@torch.no_grad()
def prepare_elbo_samples(transformer, pipeline, samples: Dict[str, torch.Tensor], config, *,
                         seed: Optional[int] = None, embeds: Optional[torch.Tensor] = None,
                         pooled_embeds: Optional[torch.Tensor] = None, micro_batch: int = 0,
                         drop_trajectory: bool = True) -> Dict[str, torch.Tensor]:
    """ELBO mode, once per epoch after sampling: per-sample seeds and the old policy's ELBOs.

    Adds ``samples["elbo_seeds"]`` [B] int64, overwrites ``samples["log_probs"]`` with the
    behaviour policy's ELBO at each (sample, j) draw for the trained timesteps j < K =
    int(sample.num_steps * train.timestep_fraction) ([B, K]; the transformer as it is now, i.e.
    the policy that just sampled), and with ``drop_trajectory`` replaces "latents" /
    "next_latents" by the final latent only ("next_latents" [B, 1, *S]), freeing the trajectory.
    Needs nothing beyond the sample dict and config, with or without config.train.cfg.

    Args:
        transformer: the (possibly DDP-wrapped) transformer, as FlowGRPO's compute_log_prob takes it.
        samples: FlowGRPO's collated sample dict (module docstring).
        seed: seed of the per-sample seeds (None: drawn from torch's global generator).
        embeds, pooled_embeds: default samples["prompt_embeds"] / ["pooled_prompt_embeds"]
            (cat([negative, positive]) is accepted with config.train.cfg; its positive half is used).
        micro_batch: rows per transformer forward (0 = all B * K at once).
    Returns:
        samples (the same dict, modified).
    Raises:
        ValueError: bad timestep_fraction, embeds rows or micro_batch.
    """
    b, steps = samples["timesteps"].shape
    columns = range(train_timesteps(config, steps))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    device = samples["timesteps"].device
    samples[SEED_KEY] = torch.randint(0, 2**62, (b,), generator=generator, dtype=torch.int64).to(device)
    embeds = samples["prompt_embeds"] if embeds is None else embeds
    pooled_embeds = samples["pooled_prompt_embeds"] if pooled_embeds is None else pooled_embeds
    samples["log_probs"] = compute_elbo(transformer, pipeline, samples, embeds, pooled_embeds, config, columns,
                                        micro_batch=micro_batch).float()
    if drop_trajectory:
        samples.pop("latents", None)
        samples["next_latents"] = samples["next_latents"][:, -1:].clone()
    return samples


# --- FlowGRPO's compute_log_prob --------------------------------------------------------------------------
def compute_log_prob(transformer, pipeline, sample: Dict[str, torch.Tensor], j: int, embeds: torch.Tensor,
                     pooled_embeds: torch.Tensor, config):
    """FlowGRPO's ``compute_log_prob`` (same signature and return values), on the fused kernels.

    config.train.estimator = "trajectory" (default): one transformer forward at
    sample["latents"][:, j] and :func:`sde_step_with_logprob` towards sample["next_latents"][:, j].
    Returns (prev_sample, log_prob [B], prev_sample_mean, std_dev_t [B, 1, 1, 1]).

    config.train.estimator = "elbo": the ELBO of sample["next_latents"][:, -1] at draw j (module
    docstring; needs :func:`prepare_elbo_samples`). Returns (x0, e_theta [B], x0_hat, t [B, 1, 1, 1]).

    With config.train.cfg, embeds / pooled_embeds are FlowGRPO's cat([negative, positive]):
    trajectory mode guides with the unconditional branch detached (as FlowGRPO); ELBO mode uses
    the positive half only (module docstring).

    Also read: config.sample.noise_level, config.sample.sde_type ("sde"), config.train.cfg,
    config.sample.guidance_scale, config.train.weighting ("adaptive"), config.train.backend ("auto").
    Raises:
        ValueError: unknown estimator. KeyError: ELBO mode without "elbo_seeds".
    """
    backend = _option(config, "train.backend", "auto")
    if estimator(config) == "trajectory":
        v = _velocity(transformer, sample["latents"][:, j], sample["timesteps"][:, j], embeds, pooled_embeds, config)
        return sde_step_with_logprob(
            pipeline.scheduler, v.float(), sample["timesteps"][:, j], sample["latents"][:, j].float(),
            prev_sample=sample["next_latents"][:, j].float(), noise_level=_option(config, "sample.noise_level", 0.7),
            sde_type=_option(config, "sample.sde_type", "sde"), backend=backend,
        )
    e, x0_hat = compute_elbo(transformer, pipeline, sample, embeds, pooled_embeds, config, [j], return_x0_hat=True)
    x0 = sample["next_latents"][:, -1].float()
    t = elbo_draws(sample, [j], num_train_timesteps=int(pipeline.scheduler.config.num_train_timesteps),
                   backend=backend)[0]
    return x0, e[:, 0], x0_hat[:, 0], t.reshape((-1,) + (1,) * (x0.dim() - 1))


# --- the loss block -----------------------------------------------------------------------------------------
def grpo_loss(sample: Dict[str, torch.Tensor], j: int, log_prob: torch.Tensor, config,
              prev_sample_mean: Optional[torch.Tensor] = None, std_dev_t: Optional[torch.Tensor] = None,
              prev_sample_mean_ref: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The loss block of FlowGRPO's timestep loop as one call.

    loss = objective(log_prob, sample["log_probs"][:, j], clamp(sample["advantages"][:, j], +-adv_clip_max))
           + beta * mean(mean_D((prev_sample_mean - prev_sample_mean_ref)^2) / (2 std_dev_t^2))

    with the objective config.train.objective (default "grpo", FlowGRPO's PPO clip with
    config.train.clip_range; any ratio objective of elbo_kernels' table, e.g. "pepg").

    Returns:
        (loss 0-dim, info) with info = FlowGRPO's logged statistics: policy_loss, approx_kl
        (0.5 mean (log_prob - old)^2), clipfrac (|ratio - 1| > clip_range), clipfrac_gt_one
        (ratio - 1 > clip_range), clipfrac_lt_one (1 - ratio > clip_range), loss, and kl_loss when
        config.train.beta > 0 (as FlowGRPO logs it). All detached.
    Raises:
        ValueError: beta > 0 without prev_sample_mean, std_dev_t and prev_sample_mean_ref; unknown objective.
    """
    clip_range = float(_option(config, "train.clip_range", 1e-4))
    adv_clip_max = float(_option(config, "train.adv_clip_max", 5.0))
    beta = float(_option(config, "train.beta", 0.0))
    old = sample["log_probs"][:, j].to(log_prob)
    advantages = torch.clamp(sample["advantages"][:, j].to(log_prob), -adv_clip_max, adv_clip_max)
    policy, _ = log_prob_policy_loss(log_prob, old, advantages, objective=_option(config, "train.objective", "grpo"),
                                     clip_range=clip_range, adv_clip_max=adv_clip_max)
    info: Dict[str, torch.Tensor] = {}
    loss = policy
    if beta > 0:
        if prev_sample_mean is None or std_dev_t is None or prev_sample_mean_ref is None:
            raise ValueError("config.train.beta > 0 needs prev_sample_mean, std_dev_t and prev_sample_mean_ref "
                             "(from compute_log_prob with the adapters disabled)")
        dims = tuple(range(1, prev_sample_mean.dim()))
        kl = (prev_sample_mean - prev_sample_mean_ref).square().mean(dim=dims, keepdim=True) / (2 * std_dev_t ** 2)
        kl = kl.mean()
        loss = policy + beta * kl
    with torch.no_grad():
        log_ratio = log_prob.detach() - old
        ratio = torch.exp(log_ratio)
        info["approx_kl"] = 0.5 * torch.mean(log_ratio ** 2)
        info["clipfrac"] = torch.mean((torch.abs(ratio - 1.0) > clip_range).float())
        info["clipfrac_gt_one"] = torch.mean((ratio - 1.0 > clip_range).float())
        info["clipfrac_lt_one"] = torch.mean((1.0 - ratio > clip_range).float())
        info["policy_loss"] = policy.detach()
        if beta > 0:
            info["kl_loss"] = kl.detach()
        info["loss"] = loss.detach()
    return loss, info


# --- the stat tracker ----------------------------------------------------------------------------------------
class PerPromptStatTracker(_Tracker):
    """:class:`elbo_kernels.PerPromptStatTracker` with FlowGRPO's [B, T] reward layout.

    FlowGRPO calls ``update(prompts, rewards, type="grpo")`` with rewards [B, T] (the reward
    repeated over the T trained timesteps) and expects advantages [B, T]. Columns that are all
    equal are tracked once and tiled; otherwise each column has its own statistics.
    """

    def __init__(self, global_std: bool = False, scale: float = 1.0, adv_clip_max: float = 5.0):
        super().__init__(global_std=global_std, scale=scale, adv_clip_max=adv_clip_max)
        self._columns: List[_Tracker] = []

    def update(self, prompts, rewards, type: str = "grpo") -> np.ndarray:  # noqa: A002 - FlowGRPO's name
        """Advantages with the shape of ``rewards`` ([B] or [B, T]); see the base class for the types."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.ndim != 2:
            return super().update(prompts, rewards, type=type)
        if (rewards == rewards[:, :1]).all():
            advantages = super().update(prompts, rewards[:, 0], type=type)
            return np.repeat(advantages[:, None], rewards.shape[1], axis=1)
        while len(self._columns) < rewards.shape[1]:
            self._columns.append(_Tracker(global_std=self.global_std, scale=self.scale,
                                          adv_clip_max=self.adv_clip_max))
        columns = [tracker.update(prompts, rewards[:, c], type=type) for c, tracker in enumerate(self._columns)]
        self.zero_std_ratio = self._columns[0].zero_std_ratio
        return np.stack(columns, axis=1)

    def clear(self) -> None:
        super().clear()
        for tracker in self._columns:
            tracker.clear()


__all__ = [
    "ESTIMATORS",
    "estimator",
    "train_timesteps",
    "PerPromptStatTracker",
    "compute_elbo",
    "compute_log_prob",
    "elbo_draws",
    "grpo_loss",
    "prepare_elbo_samples",
    "sde_step_with_logprob",
]
