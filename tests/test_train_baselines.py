"""Trainer options that run the baselines as their own configs do (FlowGRPO's SD3 configs and the study).

Each is checked against an independent reference: the grid steps FlowGRPO trains, the optimizer-step count
and the old policy's blend formula, advantages recomputed with numpy, the policy that samples the
rollouts, and the sampler arguments of the evaluation.
"""

import numpy as np
import pytest
import torch

from elbo_kernels.models import digits
from elbo_kernels.train import TrainConfig, Trainer
from elbo_kernels.train.errors import ConfigError

FLOWGRPO = dict(estimator="trajectory", sampler="sde", objective="grpo", advantage_mode="standard", kl="girsanov")


def small(tmp_path, name, **overrides):
    values = dict(
        output_dir=str(tmp_path / name), epochs=1, prompts_per_epoch=2, group_size=4, draws_per_sample=2,
        eval_every=0, eval_seeds=1, checkpoint_every=0, plots=False, tensorboard=False, progress=False,
        backend="torch", stop_at=None,
    )
    values.update(overrides)
    return TrainConfig(**values)


def record_velocity_calls(trainer):
    """Wrap trainer.velocity to record (policy, rows, t, grad enabled) of every call."""
    calls = []
    inner = trainer.velocity

    def velocity(x, t, cond):
        calls.append((trainer._policy_name, x.shape[0], t.detach().clone(), torch.is_grad_enabled()))
        return inner(x, t, cond)

    trainer.velocity = velocity
    return calls


# --- which SDE steps the trajectory estimator trains ----------------------------------------------
def test_first_steps_in_order_are_flowgrpo_timestep_fraction(tmp_path):
    """timestep_fraction 0.99 of 10 steps = int(10 * 0.99) = the first 9 grid steps, for every sample."""
    trainer = Trainer(small(tmp_path, "first", **FLOWGRPO, trajectory_steps=9, trajectory_step_order="first"))
    calls = record_velocity_calls(trainer)
    trainer.fit()
    grid = trainer.sigmas(10).float()
    trained = [t for policy, _, t, grad in calls if policy == "current" and grad]
    assert len(trained) == int(10 * 0.99)
    for j, t in enumerate(trained):  # column j of the loop = grid step j for all 8 samples
        torch.testing.assert_close(t, grid[j].expand(8), rtol=0, atol=1e-6)


def test_random_order_draws_a_subset_per_sample_and_draws_per_sample_keeps_its_older_meaning(tmp_path):
    trainer = Trainer(small(tmp_path, "random", **FLOWGRPO, draws_per_sample=3))
    assert trainer.config.steps_trained == 3  # trajectory_steps none: the older key still decides
    calls = record_velocity_calls(trainer)
    trainer.fit()
    grid = trainer.sigmas(10).float()
    trained = torch.stack([t for policy, _, t, grad in calls if policy == "current" and grad])  # [3, 8]
    assert trained.shape == (3, 8)
    for sample in range(8):  # three distinct steps of the grid, none of them the final sigma 0
        steps = [int(torch.argmin((grid - t).abs())) for t in trained[:, sample]]
        assert len(set(steps)) == 3 and max(steps) <= 9


def test_trajectory_steps_is_checked_against_the_grid_by_name(tmp_path):
    with pytest.raises(ConfigError, match="'trajectory_steps' has value 11"):
        small(tmp_path, "bad", **FLOWGRPO, trajectory_steps=11).validate()
    with pytest.raises(ConfigError, match="'trajectory_step_order' has value 'last'"):
        small(tmp_path, "bad", **FLOWGRPO, trajectory_step_order="last").validate()


# --- optimizer steps per epoch with the old policy fixed ------------------------------------------
def old_adapter(trainer):
    return {n: p.detach().clone() for n, p in trainer.transformer.named_parameters() if ".old." in n}


def current_adapter(trainer):
    return {n.replace(".default.", ".old."): p.detach().clone() for n, p in trainer.transformer.named_parameters()
            if ".default." in n and "lora_" in n}


@pytest.mark.parametrize("estimator", ["elbo", "trajectory"])
def test_inner_steps_make_that_many_optimizer_steps_and_blend_old_once(tmp_path, estimator):
    overrides = FLOWGRPO if estimator == "trajectory" else {}
    trainer = Trainer(small(tmp_path, estimator, inner_steps=2, old_decay_rate=0.3, **overrides))
    old_before = old_adapter(trainer)
    seen = []
    inner = trainer._policy_step
    trainer._policy_step = lambda rollout, adv, draws: seen.append(list(rollout.prompts)) or inner(rollout, adv, draws)
    trainer.fit()
    assert trainer.step == 2 and trainer.history[0]["step"] == 2
    # The two parts cover the epoch's 8 samples exactly once (4 each).
    assert [len(p) for p in seen] == [4, 4]
    prompts = trainer.sample_prompts(trainer.generator(0, "prompts"))
    assert sorted(seen[0] + seen[1]) == sorted(prompts)
    # One blend, after the last step: old = d old + (1 - d) current with d = min(0.3 * 2, 0.5) = 0.5.
    current = current_adapter(trainer)
    for name, after in old_adapter(trainer).items():
        torch.testing.assert_close(after, 0.5 * old_before[name] + 0.5 * current[name], rtol=1e-6, atol=1e-7)


def test_inner_steps_must_divide_the_batch(tmp_path):
    with pytest.raises(ConfigError, match="'inner_steps' has value 3"):
        small(tmp_path, "bad", inner_steps=3).validate()


def test_inner_steps_one_is_the_single_step_epoch(tmp_path):
    a = Trainer(small(tmp_path, "a", epochs=2))
    a.fit()
    b = Trainer(small(tmp_path, "b", epochs=2, inner_steps=1))
    b.fit()
    for x, y in zip(current_adapter(a).values(), current_adapter(b).values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# --- global-std advantages --------------------------------------------------------------------------
def test_global_std_advantages_divide_by_the_std_of_the_whole_batch(tmp_path):
    trainer = Trainer(small(tmp_path, "global", advantage_mode="standard", advantage_std="global"))
    prompts = ["a"] * 3 + ["b"] * 3
    rewards = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.2, 0.8], dtype=torch.float64)
    r = rewards.numpy()
    means = {p: r[[i for i, q in enumerate(prompts) if q == p]].mean() for p in set(prompts)}
    expected = np.array([r[i] - means[p] for i, p in enumerate(prompts)]) / (r.std() + 1e-4)
    np.testing.assert_allclose(trainer.advantages(prompts, rewards).numpy(), expected, rtol=1e-6)
    per_group = Trainer(small(tmp_path, "group", advantage_mode="standard")).advantages(prompts, rewards)
    assert not np.allclose(per_group.numpy(), expected)  # the default (per prompt) differs on this batch


# --- the rollout policy ------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["old", "current"])
def test_rollouts_come_from_the_chosen_policy(tmp_path, which):
    trainer = Trainer(small(tmp_path, which, rollout_policy=which))
    calls = record_velocity_calls(trainer)
    prompts = [digits.prompt(d) for d in (1, 2)]
    trainer.rollout(prompts, 0, range(2))
    assert calls and {policy for policy, *_ in calls} == {which}


# --- evaluation as deployed ----------------------------------------------------------------------
def test_evaluation_uses_the_configured_steps_and_guidance(tmp_path):
    trainer = Trainer(small(tmp_path, "eval", eval_num_steps=40, eval_guidance_scale=4.5))
    seen = []
    sample = trainer.sample

    def spy(prompts, num_steps=10, guidance_scale=1.0, seed=0):
        seen.append((num_steps, guidance_scale))
        return sample(prompts, num_steps=num_steps, guidance_scale=guidance_scale, seed=seed)

    trainer.sample = spy
    trainer.evaluate()
    assert seen and set(seen) == {(40, 4.5)}
    default = Trainer(small(tmp_path, "default"))
    seen.clear()
    default.sample = spy
    default.evaluate()
    assert set(seen) == {(10, 1.0)}  # none: DigitEval's own 10 steps without CFG


def test_eval_options_are_checked_by_name(tmp_path):
    with pytest.raises(ConfigError, match="'eval_guidance_scale' has value 0.5"):
        small(tmp_path, "bad", eval_guidance_scale=0.5).validate()
    with pytest.raises(ConfigError, match="'eval_num_steps' has value 0"):
        small(tmp_path, "bad", eval_num_steps=0).validate()
