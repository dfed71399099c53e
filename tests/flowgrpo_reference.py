"""FlowGRPO's SD3 training math, written out independently from its formulas, and its sample layout.

These are the oracles of the drop-in tests (tests/test_flow_grpo*.py): the SDE step with its
log-density, compute_log_prob's transformer call (CFG with the unconditional branch a
stop-gradient), the loss block of the timestep loop, and the sampling block that builds
FlowGRPO's sample dicts ("prompt_embeds", "timesteps" [B, T], "latents" / "next_latents"
[B, T, *S], "log_probs" [B, T]).
"""

import functools
import math
import types

import numpy as np
import torch

from elbo_kernels.integrations import flow_grpo as fg

NUM_STEPS = 5


def flowgrpo_sde_step(scheduler, model_output, timestep, sample, noise_level, prev_sample=None, noise=None,
                      sde_type="sde"):
    """FlowGRPO's sde_step_with_logprob from its formula (float32 throughout)."""
    model_output, sample = model_output.float(), sample.float()
    index = [scheduler.index_for_timestep(t) for t in timestep]
    view = (-1,) + (1,) * (sample.dim() - 1)
    sigma = scheduler.sigmas[index].view(view)
    sigma_prev = scheduler.sigmas[[i + 1 for i in index]].view(view)
    sigma_max = scheduler.sigmas[1].item()
    dt = sigma_prev - sigma
    if sde_type == "sde":
        std = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
        mean = (sample * (1 + std ** 2 / (2 * sigma) * dt)
                + model_output * (1 + std ** 2 * (1 - sigma) / (2 * sigma)) * dt)
        if prev_sample is None:
            prev_sample = mean + std * torch.sqrt(-1 * dt) * noise
        log_prob = (-((prev_sample - mean) ** 2) / (2 * (std * torch.sqrt(-1 * dt)) ** 2)
                    - torch.log(std * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(torch.as_tensor(2 * math.pi))))
    else:
        std = sigma_prev * math.sin(noise_level * math.pi / 2)
        mean = (sample - sigma * model_output) * (1 - sigma_prev) \
            + (sample + model_output * (1 - sigma)) * torch.sqrt(sigma_prev ** 2 - std ** 2)
        if prev_sample is None:
            prev_sample = mean + std * noise
        log_prob = -((prev_sample - mean) ** 2)
    return prev_sample, log_prob.mean(dim=tuple(range(1, log_prob.dim()))), mean, std


def flowgrpo_compute_log_prob(transformer, scheduler, sample, j, embeds, pooled_embeds, cfg, guidance_scale,
                              noise_level=0.7):
    """FlowGRPO's compute_log_prob: with cfg, one forward of [uncond; text] rows and
    v = u + g (c - u) with u = stopgrad(uncond); then the SDE step towards next_latents[:, j]."""
    latents, timesteps = sample["latents"][:, j], sample["timesteps"][:, j]
    if cfg:
        out = transformer(hidden_states=torch.cat([latents] * 2), timestep=torch.cat([timesteps] * 2),
                          encoder_hidden_states=embeds, pooled_projections=pooled_embeds, return_dict=False)[0]
        uncond, text = out.chunk(2)
        uncond = uncond.detach()
        v = uncond + guidance_scale * (text - uncond)
    else:
        v = transformer(hidden_states=latents, timestep=timesteps, encoder_hidden_states=embeds,
                        pooled_projections=pooled_embeds, return_dict=False)[0]
    return flowgrpo_sde_step(scheduler, v.float(), timesteps, latents.float(), noise_level,
                             prev_sample=sample["next_latents"][:, j].float())


def flowgrpo_loss(log_prob, old_log_prob, advantages, mean, mean_ref, std, clip_range, adv_clip_max, beta):
    """The loss block of FlowGRPO's timestep loop."""
    advantages = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.mean(torch.maximum(unclipped, clipped))
    kl = torch.mean(((mean - mean_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std ** 2))
    return {
        "loss": policy_loss + beta * kl, "policy_loss": policy_loss, "kl_loss": kl,
        "approx_kl": 0.5 * torch.mean((log_prob - old_log_prob) ** 2),
        "clipfrac": torch.mean((torch.abs(ratio - 1.0) > clip_range).float()),
        "clipfrac_gt_one": torch.mean((ratio - 1.0 > clip_range).float()),
        "clipfrac_lt_one": torch.mean((1.0 - ratio > clip_range).float()),
    }


def flowgrpo_config(estimator="trajectory", **train):
    # backend "torch": the pure-torch kernels (the C++ backend is exercised by its own tests and by
    # test_sde_step_matches_flowgrpo_formula_on_every_step with "auto").
    defaults = dict(cfg=False, beta=0.0, clip_range=1e-4, adv_clip_max=5.0, estimator=estimator, backend="torch")
    return types.SimpleNamespace(train=types.SimpleNamespace(**{**defaults, **train}),
                                 sample=types.SimpleNamespace(noise_level=0.7, guidance_scale=4.5))


def cfg_embeds(model, sample):
    """FlowGRPO's training-time CFG conditioning: cat([negative, positive]) with the "" prompt as negative."""
    b = sample["prompt_embeds"].shape[0]
    negative = model.encode_prompts([""] * b)
    return (torch.cat([negative["encoder_hidden_states"], sample["prompt_embeds"]]),
            torch.cat([negative["pooled_projections"], sample["pooled_prompt_embeds"]]))


@torch.no_grad()
def rollout(model, prompts, seed=0, noise_level=0.7, guidance_scale=1.0, num_steps=NUM_STEPS,
            step=functools.partial(fg.sde_step_with_logprob, backend="torch")):
    """FlowGRPO's sampling pipeline (one step call per timestep with t.unsqueeze(0), CFG on a
    cat([negative, positive]) batch when guidance_scale > 1), then its sample dict layout."""
    pipeline, transformer = model.pipeline, model.transformer
    pipeline.scheduler.set_timesteps(num_steps)
    cond = model.encode_prompts(prompts)
    embeds, pooled = cond["encoder_hidden_states"], cond["pooled_projections"]
    b = len(prompts)
    guided = guidance_scale > 1
    if guided:
        negative = model.encode_prompts([""] * b)
        hidden = torch.cat([negative["encoder_hidden_states"], embeds])
        pooled_in = torch.cat([negative["pooled_projections"], pooled])
    else:
        hidden, pooled_in = embeds, pooled
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, *model.latent_shape, generator=generator)
    all_latents, log_probs = [latents], []
    for t in pipeline.scheduler.timesteps:
        x_in = torch.cat([latents] * 2) if guided else latents
        v = transformer(hidden_states=x_in, timestep=t.expand(x_in.shape[0]), encoder_hidden_states=hidden,
                        pooled_projections=pooled_in, return_dict=False)[0]
        if guided:
            uncond, text = v.chunk(2)
            v = uncond + guidance_scale * (text - uncond)
        latents, log_prob, _, _ = step(pipeline.scheduler, v.float(), t.unsqueeze(0), latents.float(),
                                       noise_level=noise_level, generator=generator)
        all_latents.append(latents)
        log_probs.append(log_prob)
    latents = torch.stack(all_latents, dim=1)  # (batch_size, num_steps + 1, 16, 8, 8)
    images = model.decode(latents[:, -1])
    return {
        "prompt_embeds": embeds,
        "pooled_prompt_embeds": pooled,
        "timesteps": pipeline.scheduler.timesteps.repeat(b, 1),
        "latents": latents[:, :-1],
        "next_latents": latents[:, 1:],
        "log_probs": torch.stack(log_probs, dim=1),
    }, images


def with_advantages(sample, prompts, rewards, tracker=None):
    tracker = tracker or fg.PerPromptStatTracker()
    steps = sample["timesteps"].shape[1]
    rewards = np.repeat(np.asarray(rewards)[:, None], steps, axis=1)  # FlowGRPO's [B, T] rewards
    sample["advantages"] = torch.as_tensor(tracker.update(prompts, rewards), dtype=torch.float32)
    return sample
