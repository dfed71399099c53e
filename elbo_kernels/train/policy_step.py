"""One policy-gradient step's loss and backward, for each likelihood estimator.

ELBO (the study's recipe): from the final samples x0 only. K draws (t, eps) per
sample, batched as [B*K, ...]; old, reference, anchor (with anchor_beta > 0) and
current velocities at the same x_t; the fused ``ek.policy_loss``.

Trajectory (FlowGRPO): from the stored SDE trajectory. K of the T steps per
sample (a random permutation per sample, so one forward covers B different
steps); the current policy's step log-probability on the fused SDE-step
kernel against the behaviour policy's recorded one; FlowGRPO's KL on the step
means.

Both call ``backward`` per micro-batch and return averaged statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch


from ..estimators import noising, sample_noise, sample_timesteps, sde_step_log_prob
from ..estimators.importance import grid_importance_timesteps, scale_row_gradients
from ..objectives import log_prob_policy_loss, policy_loss
from ..sampling import SDETrajectory


@dataclass
class Rollout:
    prompts: List[str]
    final: torch.Tensor  # x0 [B, *S]
    sigmas: torch.Tensor  # the rollout grid [T + 1]
    trajectory: Optional[SDETrajectory] = None

    def select(self, index: torch.Tensor) -> "Rollout":
        """The rollout of samples ``index`` (a 1-D index tensor), e.g. one part of an epoch's batch."""
        trajectory = self.trajectory
        if trajectory is not None:
            trajectory = SDETrajectory(trajectory.latents[index], trajectory.log_probs[index], trajectory.sigmas,
                                       trajectory.final[index])
        return Rollout([self.prompts[i] for i in index.tolist()], self.final[index], self.sigmas, trajectory)


class StatsAverage:
    """Weighted average of per-micro-batch statistics."""

    def __init__(self):
        self.total: Dict[str, float] = {}
        self.weight = 0.0

    def add(self, stats: Dict[str, torch.Tensor], weight: float) -> None:
        for key, value in stats.items():
            value = float(value)
            if key == "ratio_max":
                self.total[key] = max(self.total.get(key, value), value)
            else:
                self.total[key] = self.total.get(key, 0.0) + weight * value
        self.weight += weight

    def result(self) -> Dict[str, float]:
        return {k: (v if k == "ratio_max" else v / self.weight) for k, v in self.total.items()}


def micro_batches(num_samples: int, draws_per_sample: int, micro_batch: int) -> List[slice]:
    """Slices over samples so that each holds at most ``micro_batch`` draws (>= one sample)."""
    if micro_batch <= 0:
        return [slice(0, num_samples)]
    per = max(1, micro_batch // draws_per_sample)
    return [slice(i, min(i + per, num_samples)) for i in range(0, num_samples, per)]


def draw_timesteps(cfg, grid: torch.Tensor, generators: Sequence[torch.Generator]):
    """t [B*K] and the importance weights [B*K] (None without ``timestep_proposal``), one generator per sample."""
    draws_per_sample, paired = cfg.draws_per_sample, cfg.noise_mode == "antithetic"
    if cfg.timestep_proposal is None:
        return torch.cat([sample_timesteps(1, draws_per_sample, sampler=cfg.timestep_sampler, grid=grid, generator=g,
                                           paired=paired, first_step=cfg.timestep_first_step,
                                           last_step=cfg.timestep_last_step).reshape(-1) for g in generators]), None
    proposal = [float(v) for v in cfg.timestep_proposal.split(",")]
    per = draws_per_sample // 2 if paired else draws_per_sample
    drawn = [grid_importance_timesteps(1, per, grid, proposal, generator=g) for g in generators]
    t, w = torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])
    if paired:  # the two draws of an antithetic pair share their t (and its weight)
        t, w = t.repeat_interleave(2, dim=1), w.repeat_interleave(2, dim=1)
    return t.reshape(-1), w.reshape(-1)


def share_within_groups(prompts: Sequence[str], draws_per_sample: int, t, eps, w):
    """Every sample takes the draws of the first sample with the same prompt (common random numbers
    across the advantage group: the parts of the per-draw terms that the draws alone decide cancel
    in sum_b A_b, which is 0 over a group). Each sample's own draws keep their distribution."""
    first: Dict[str, int] = {}
    source = torch.tensor([first.setdefault(p, i) for i, p in enumerate(prompts)])
    rows = (source[:, None] * draws_per_sample + torch.arange(draws_per_sample)).reshape(-1).to(t.device)
    return t[rows], eps[rows], None if w is None else w[rows]


def elbo_step(trainer, rollout: Rollout, advantages: torch.Tensor,
              generators: Sequence[torch.Generator]) -> Dict[str, float]:
    """``generators``: one per sample, so a sample's draws do not depend on its batch or process."""
    cfg = trainer.config
    model = trainer.model
    x0 = rollout.final
    batch_size, draws_per_sample = x0.shape[0], cfg.draws_per_sample
    shape = tuple(x0.shape[1:])
    grid = rollout.sigmas.cpu()
    t_all, w_all = draw_timesteps(cfg, grid, generators)
    t_all = t_all.to(trainer.device, x0.dtype)
    eps_all = torch.cat([
        sample_noise((draws_per_sample,) + shape, draws_per_sample, mode=cfg.noise_mode, generator=g, dtype=x0.dtype) for g in generators
    ]).to(trainer.device)
    if cfg.group_draws:
        t_all, eps_all, w_all = share_within_groups(rollout.prompts, draws_per_sample, t_all, eps_all, w_all)
    adv_all = advantages.to(trainer.device, torch.float32).repeat_interleave(draws_per_sample)
    use_ref = cfg.kl is not None and cfg.beta > 0
    use_anchor = cfg.anchor_beta > 0
    average = StatsAverage()
    for samples in micro_batches(batch_size, draws_per_sample, cfg.micro_batch):
        rows = slice(samples.start * draws_per_sample, samples.stop * draws_per_sample)
        prompts = [p for p in rollout.prompts[samples] for _ in range(draws_per_sample)]
        cond = model.encode_prompts(prompts)
        t, eps = t_all[rows], eps_all[rows]
        x_t = noising(x0[samples], t, eps, backend=cfg.backend)
        with torch.no_grad():
            with trainer.policy("old"):
                v_old = trainer.velocity(x_t, t, cond)
            v_ref = None
            if use_ref:
                with trainer.policy("reference"):
                    v_ref = trainer.velocity(x_t, t, cond)
            v_anchor = None
            if use_anchor:
                with trainer.policy("anchor"):
                    v_anchor = trainer.velocity(x_t, t, cond)
        v = trainer.velocity(x_t, t, cond)
        if w_all is not None:
            v = scale_row_gradients(v, w_all[rows].to(trainer.device))
        loss, stats = policy_loss(
            v.float(), v_old.float(), None if v_ref is None else v_ref.float(), x0[samples].float(), eps.float(), t,
            adv_all[rows], objective=trainer.objective, weighting=trainer.weighting, kl=cfg.kl, beta=cfg.beta,
            clip_range=cfg.clip_range, adv_clip_max=cfg.adv_clip_max, nft_beta=cfg.nft_beta,
            v_anchor=None if v_anchor is None else v_anchor.float(), anchor_beta=cfg.anchor_beta,
            anchor_kl=cfg.anchor_kl, backend=cfg.backend,
        )
        fraction = (samples.stop - samples.start) / batch_size
        trainer.backward(loss * fraction)
        stats["loss"] = loss.detach()
        average.add(stats, fraction)
    return average.result()


def trajectory_step(trainer, rollout: Rollout, advantages: torch.Tensor,
                    generators: Sequence[torch.Generator]) -> Dict[str, float]:
    cfg = trainer.config
    trajectory = rollout.trajectory
    sigmas = trajectory.sigmas.to(trainer.device, torch.float64)
    b, steps = trajectory.log_probs.shape
    k = cfg.steps_trained
    if cfg.trajectory_step_order == "first":
        # FlowGRPO's SD3 configs: the first int(T * timestep_fraction) steps, in order, for every sample.
        order = torch.arange(k).expand(b, k).to(trainer.device)
    else:
        # A random subset of the steps per sample (one forward then covers B different steps).
        order = torch.stack([torch.randperm(steps, generator=g)[:k] for g in generators]).to(trainer.device)
    adv = advantages.to(trainer.device, torch.float32)
    use_ref = cfg.kl is not None and cfg.beta > 0
    average = StatsAverage()
    rows = torch.arange(b, device=trainer.device)
    for column in range(k):
        j = order[:, column]
        for samples in micro_batches(b, 1, cfg.micro_batch):
            r, jj = rows[samples], j[samples]
            prompts = rollout.prompts[samples]
            x = trajectory.latents[r, jj].to(trainer.device)
            x_prev = trajectory.latents[r, jj + 1].to(trainer.device)
            sigma, sigma_prev = sigmas[jj], sigmas[jj + 1]
            t = sigma.to(x.dtype)
            v = trainer.guided_velocity(x, t, prompts)
            log_prob, prev_mean, std = sde_step_log_prob(
                v.float(), x.float(), x_prev.float(), sigma, sigma_prev, noise_level=cfg.noise_level,
                sde_type=cfg.sde_type, sigma_max=float(sigmas[1]), backend=cfg.backend,
            )
            loss, stats = log_prob_policy_loss(
                log_prob, trajectory.log_probs[r, jj].to(log_prob), adv[samples], objective=cfg.objective,
                clip_range=cfg.clip_range, adv_clip_max=cfg.adv_clip_max,
            )
            if use_ref:
                with torch.no_grad(), trainer.policy("reference"):
                    v_ref = trainer.guided_velocity(x, t, prompts)
                    _, ref_mean, _ = sde_step_log_prob(
                        v_ref.float(), x.float(), x_prev.float(), sigma, sigma_prev, noise_level=cfg.noise_level,
                        sde_type=cfg.sde_type, sigma_max=float(sigmas[1]), backend=cfg.backend,
                    )
                # FlowGRPO's KL: squared distance of the step means over twice the step variance.
                kl = ((prev_mean - ref_mean).square().flatten(1).mean(1) / (2 * std.square())).mean()
                loss = loss + cfg.beta * kl
                stats["kl"] = kl.detach()
            fraction = (samples.stop - samples.start) / b / k
            trainer.backward(loss * fraction)
            stats["loss"] = loss.detach()
            average.add(stats, fraction)
    return average.result()


POLICY_STEPS: Dict[str, Callable] = {"elbo": elbo_step, "trajectory": trajectory_step}
