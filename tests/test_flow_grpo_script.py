"""The FlowGRPO drop-in as FlowGRPO's scripts/train_sd3.py runs it.

CFG on (every FlowGRPO SD3 config trains with train.cfg), the evaluation rollout at
noise_level 0 through the re-bound step function, ml_collections configs that lack the
library's keys, timestep_fraction, autocast, and several processes under accelerate
(tests/flowgrpo_multiprocess_job.py). Oracles: tests/flowgrpo_reference.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import ml_collections  # FlowGRPO's config type (a test dependency)
import pytest
import torch
from peft import LoraConfig

from elbo_kernels.integrations import flow_grpo as fg
from elbo_kernels.models.sd3 import SD3Model, save_tiny_pipeline
from flowgrpo_reference import (NUM_STEPS, cfg_embeds, flowgrpo_compute_log_prob, flowgrpo_config, flowgrpo_sde_step,
                                rollout)
from reference import naive_elbo

PROMPTS = ["a red cube", "a blue ball"]
GUIDANCE = 4.5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(2)
    model = SD3Model.load(str(save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd3"))), max_sequence_length=8)
    torch.manual_seed(0)
    model.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                             target_modules=model.lora_target_modules), adapter_name="flowgrpo")
    with torch.no_grad():  # LoRA B starts at zero: move it so that the adapter's gradient is informative
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def lora_parameters(model):
    return [p for n, p in model.transformer.named_parameters() if "lora_" in n]


def flowgrpo_configdict(**train):
    """The keys FlowGRPO's config/base.py defines (a subset), as ml_collections holds them: no library keys."""
    config = ml_collections.ConfigDict()
    config.sample = ml_collections.ConfigDict(dict(num_steps=NUM_STEPS, noise_level=0.7, guidance_scale=GUIDANCE))
    config.train = ml_collections.ConfigDict(dict(cfg=True, beta=0.0, clip_range=1e-4, adv_clip_max=5.0,
                                                  timestep_fraction=1.0, num_inner_epochs=1))
    config.train.update(train)
    return config


# ----------------------------------------------------------------------------- trajectory mode with CFG


def test_trajectory_mode_with_cfg_matches_flowgrpo_log_prob_and_parameter_gradient(model):
    """The unconditional branch is a stop-gradient: d log_prob / d theta = g * d(v_text) terms only."""
    sample, _ = rollout(model, PROMPTS * 2, guidance_scale=GUIDANCE)
    embeds, pooled = cfg_embeds(model, sample)
    config = flowgrpo_config(cfg=True)
    params = lora_parameters(model)
    weights = torch.tensor([1.0, -0.5, 2.0, 0.25])  # a fixed upstream gradient on the [B] log-probs
    for j in (0, 2, NUM_STEPS - 1):
        _, ours, ours_mean, ours_std = fg.compute_log_prob(model.transformer, model.pipeline, sample, j, embeds,
                                                           pooled, config)
        _, theirs, their_mean, their_std = flowgrpo_compute_log_prob(
            model.transformer, model.pipeline.scheduler, sample, j, embeds, pooled, cfg=True,
            guidance_scale=GUIDANCE)
        torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(ours_mean, their_mean, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(ours_std, their_std.expand_as(ours_std))
        grad_ours = torch.autograd.grad((weights * ours).sum(), params)
        grad_theirs = torch.autograd.grad((weights * theirs).sum(), params)
        for a, b in zip(grad_ours, grad_theirs):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cfg_gradient_differs_when_the_unconditional_branch_is_not_detached(model):
    """The check above can fail: both branches through the gradient change it by far more than its tolerance."""
    sample, _ = rollout(model, PROMPTS, guidance_scale=GUIDANCE)
    embeds, pooled = cfg_embeds(model, sample)
    params = lora_parameters(model)
    _, ours, _, _ = fg.compute_log_prob(model.transformer, model.pipeline, sample, 1, embeds, pooled,
                                        flowgrpo_config(cfg=True))
    out = model.transformer(hidden_states=torch.cat([sample["latents"][:, 1]] * 2),
                            timestep=torch.cat([sample["timesteps"][:, 1]] * 2), encoder_hidden_states=embeds,
                            pooled_projections=pooled, return_dict=False)[0]
    uncond, text = out.chunk(2)
    both = flowgrpo_sde_step(model.pipeline.scheduler, (uncond + GUIDANCE * (text - uncond)).float(),
                             sample["timesteps"][:, 1], sample["latents"][:, 1],
                             0.7, prev_sample=sample["next_latents"][:, 1])[1]
    a = torch.cat([g.flatten() for g in torch.autograd.grad(ours.sum(), params)])
    b = torch.cat([g.flatten() for g in torch.autograd.grad(both.sum(), params)])
    assert float((a - b).norm() / a.norm()) > 1e-2


# ----------------------------------------------------------------------------- evaluation at noise_level 0


def test_evaluation_rollout_at_noise_level_zero_through_the_rebound_step_is_the_cfg_euler_ode(model):
    """FlowGRPO evaluates with pipeline_with_logprob(..., noise_level=0) calling the (re-bound) step function."""
    prompts = PROMPTS
    sample, images = rollout(model, prompts, noise_level=0, guidance_scale=GUIDANCE, num_steps=6,
                             step=fg.sde_step_with_logprob)
    assert bool(sample["log_probs"].isnan().all())  # FlowGRPO's log_prob at noise_level 0 is 0/0 too
    assert images.shape == (2, 3, 16, 16) and bool(images.isfinite().all())
    # The deterministic rollout, written independently: x <- x + dt * (u + g (c - u)) on the scheduler's sigmas.
    cond, negative = model.encode_prompts(prompts), model.encode_prompts([""] * 2)
    sigmas = model.pipeline.scheduler.sigmas
    x = sample["latents"][:, 0]
    with torch.no_grad():
        for i, t in enumerate(model.pipeline.scheduler.timesteps):
            c = model.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=cond[
                "encoder_hidden_states"], pooled_projections=cond["pooled_projections"], return_dict=False)[0]
            u = model.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=negative[
                "encoder_hidden_states"], pooled_projections=negative["pooled_projections"], return_dict=False)[0]
            x = x + (sigmas[i + 1] - sigmas[i]) * (u + GUIDANCE * (c - u))
    torch.testing.assert_close(sample["next_latents"][:, -1], x, rtol=1e-4, atol=1e-5)


def test_step_at_noise_level_zero_equals_flowgrpo_formula(model):
    scheduler = model.pipeline.scheduler
    scheduler.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    v, x = torch.randn(3, 16, 8, 8, generator=g), torch.randn(3, 16, 8, 8, generator=g)
    for t in scheduler.timesteps:
        for backend in ("torch", "auto"):
            ours = fg.sde_step_with_logprob(scheduler, v, t.unsqueeze(0), x, noise_level=0, backend=backend)
            theirs = flowgrpo_sde_step(scheduler, v, t.unsqueeze(0), x, 0, noise=torch.randn(x.shape, generator=g))
            assert torch.equal(ours[0], theirs[0])  # x + dt v, rounded the same way
            torch.testing.assert_close(ours[2], theirs[2])
            assert bool(ours[1].isnan().all()) and bool(theirs[1].isnan().all())
            assert float(ours[3].abs().max()) == 0.0
    with pytest.raises(ValueError, match="noise_level must be finite and >= 0"):
        fg.sde_step_with_logprob(scheduler, v, scheduler.timesteps[:1], x, noise_level=-1.0)


# ----------------------------------------------------------------------------- FlowGRPO's config


def test_estimator_defaults_to_trajectory_when_flowgrpo_config_lacks_the_key(model):
    config = flowgrpo_configdict(cfg=False)
    with pytest.raises(AttributeError):
        config.train.estimator  # noqa: B018 - why the docs read it through fg.estimator(config)
    assert fg.estimator(config) == "trajectory"
    sample, _ = rollout(model, PROMPTS)
    sample["advantages"] = torch.ones(2, NUM_STEPS)
    _, log_prob, _, _ = fg.compute_log_prob(model.transformer, model.pipeline, sample, 0, sample["prompt_embeds"],
                                            sample["pooled_prompt_embeds"], config)
    loss, info = fg.grpo_loss(sample, 0, log_prob, config)
    assert bool(loss.isfinite()) and float(info["approx_kl"]) < 1e-10
    config.train.estimator = "elbo"
    assert fg.estimator(config) == "elbo"
    config.train.estimator = "sde"
    with pytest.raises(ValueError, match="config.train.estimator must be one of"):
        fg.estimator(config)


def test_elbo_mode_trains_only_the_timestep_fraction_of_columns(model):
    config = flowgrpo_configdict(cfg=False, estimator="elbo", timestep_fraction=0.8, backend="torch")
    sample, _ = rollout(model, PROMPTS)
    fg.prepare_elbo_samples(model.transformer, model.pipeline, sample, config, seed=0)
    assert sample["log_probs"].shape == (2, 4)  # int(5 * 0.8) trained timesteps, as FlowGRPO's loop
    config.train.timestep_fraction = 0.1
    with pytest.raises(ValueError, match="timestep_fraction must give between 1 and 5"):
        fg.prepare_elbo_samples(model.transformer, model.pipeline, rollout(model, PROMPTS)[0], config)


# ----------------------------------------------------------------------------- ELBO mode with CFG on


def test_elbo_mode_with_flowgrpo_cfg_settings_needs_no_extra_code_and_uses_the_conditional_velocity(model):
    config = flowgrpo_configdict(cfg=True, estimator="elbo", backend="torch")
    prompts = PROMPTS * 2
    sample, _ = rollout(model, prompts, guidance_scale=GUIDANCE)
    fg.prepare_elbo_samples(model.transformer, model.pipeline, sample, config, seed=3)  # no embeds passed
    embeds, pooled = cfg_embeds(model, sample)  # what FlowGRPO's loop passes with train.cfg
    params = lora_parameters(model)
    for j in (0, 3):
        _, e, x0_hat, t = fg.compute_log_prob(model.transformer, model.pipeline, sample, j, embeds, pooled, config)
        torch.testing.assert_close(e.detach(), sample["log_probs"][:, j], rtol=1e-5, atol=1e-6)  # on-policy
        # Independently: the adaptive ELBO of the conditional velocity at the sample's draw (t, eps).
        t_j, eps = fg.elbo_draws(sample, [j])
        x0 = sample["next_latents"][:, -1]
        x_t = (1 - t_j.reshape(-1, 1, 1, 1)) * x0 + t_j.reshape(-1, 1, 1, 1) * eps
        v = model.transformer(hidden_states=x_t, timestep=t_j.reshape(-1) * 1000,
                              encoder_hidden_states=sample["prompt_embeds"],
                              pooled_projections=sample["pooled_prompt_embeds"], return_dict=False)[0]
        expected = naive_elbo(v.double(), x0.double(), eps.double(), t_j.reshape(-1).double(), "adaptive")
        torch.testing.assert_close(e.double(), expected, rtol=1e-4, atol=1e-6)
        grad = torch.autograd.grad(e.sum(), params)
        grad_expected = torch.autograd.grad(expected.sum(), params)
        for a, b in zip(grad, grad_expected):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-7)
    with pytest.raises(ValueError, match="embeds must have B = 4 rows, or 2B = 8"):
        fg.compute_log_prob(model.transformer, model.pipeline, sample, 0, embeds[:3], pooled, config)


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("estimator", ["trajectory", "elbo"])
def test_bf16_autocast_is_no_worse_than_flowgrpo_under_the_same_autocast(model, estimator):
    """FlowGRPO wraps compute_log_prob in accelerator.autocast() for full fine-tuning in bf16."""
    sample, _ = rollout(model, PROMPTS * 2, guidance_scale=GUIDANCE)
    embeds, pooled = cfg_embeds(model, sample)
    config = flowgrpo_config(estimator, cfg=True)
    if estimator == "elbo":
        fg.prepare_elbo_samples(model.transformer, model.pipeline, sample, config, seed=5)

    def ours():
        return fg.compute_log_prob(model.transformer, model.pipeline, sample, 2, embeds, pooled, config)[1]

    with torch.no_grad():
        exact = ours()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ours()
            if estimator == "trajectory":
                oracle = flowgrpo_compute_log_prob(model.transformer, model.pipeline.scheduler, sample, 2, embeds,
                                                   pooled, cfg=True, guidance_scale=GUIDANCE)[1]
            else:  # the same ELBO with the transformer alone in bf16 and the rest in plain float32 torch
                t_j, eps = fg.elbo_draws(sample, [2])
                x0 = sample["next_latents"][:, -1]
                x_t = (1 - t_j.reshape(-1, 1, 1, 1)) * x0 + t_j.reshape(-1, 1, 1, 1) * eps
                v = model.transformer(hidden_states=x_t, timestep=t_j.reshape(-1) * 1000,
                                      encoder_hidden_states=sample["prompt_embeds"],
                                      pooled_projections=sample["pooled_prompt_embeds"], return_dict=False)[0]
                oracle = naive_elbo(v.float(), x0, eps, t_j.reshape(-1), "adaptive")
    assert low.dtype == torch.float32 and bool(low.isfinite().all())
    ours_error = (low.double() - exact.double()).abs().max()
    oracle_error = (oracle.double() - exact.double()).abs().max()
    assert ours_error <= 2 * oracle_error + 1e-6, (float(ours_error), float(oracle_error))


# ----------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_under_accelerate_train_in_sync_in_both_modes_with_cfg(tmp_path):
    """FlowGRPO's launch: DDP-wrapped peft model (.module.disable_adapter for the KL), gradient accumulation
    over timesteps, two inner epochs with reshuffling; both ranks must end with the same adapter."""
    job = Path(__file__).with_name("flowgrpo_multiprocess_job.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(job), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for estimator in ("trajectory", "elbo"):
        ranks = [torch.load(tmp_path / f"{estimator}_rank{r}.pt") for r in (0, 1)]
        assert ranks[0]["losses"] and all(torch.isfinite(torch.tensor(r["losses"])).all() for r in ranks)
        assert ranks[0]["prompts"] != ranks[1]["prompts"]  # each rank trained on its own samples
        for key, value in ranks[0]["lora"].items():
            torch.testing.assert_close(ranks[1]["lora"][key], value, rtol=0, atol=0)
        moved = max(float((ranks[0]["lora"][k] - ranks[0]["initial"][k]).abs().max()) for k in ranks[0]["lora"])
        assert moved > 0
