"""AWM's and DiffusionNFT's published options as library features, against float64 references
written from the papers' formulas (tests/reference.py):

- the ghuber weighting with its power, and the unambiguous t_squared / t_linear names;
- the KL to an EMA anchor in the same policy_loss call, with AWM's two KL weightings;
- AWM's timestep schedule (one grid step per stratum) and the trainer options that use them.
"""

import json
import warnings

import pytest
import torch

import elbo_kernels as ek
from elbo_kernels.estimators import sample_timesteps, weighting_record
from elbo_kernels.train import TrainConfig, Trainer
from elbo_kernels.train.errors import ConfigError, ResumeError
from reference import central_difference_gradient, naive_elbo, naive_policy_loss
from test_policy_loss import batch
from test_train import small

FUSED = [name for name in ("cpu", "triton") if ek.available_backends()[name]]


# ----------------------------------------------------------------------------- weightings


@pytest.mark.parametrize("power", [0.25, 0.5, 2.0])
@pytest.mark.parametrize("backend", ["torch"] + FUSED)
def test_ghuber_value_and_gradient_match_the_formula_at_each_power(power, backend):
    v0, _, _, x0, eps, t, _ = batch(n=4, shape=(3, 5), b=2)
    v = v0.clone().requires_grad_()
    weights = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    got = ek.elbo(v, x0, eps, t, weighting=ek.ghuber(power), backend=backend)
    (got * weights).sum().backward()
    expected = naive_elbo(v0, x0, eps, t, ("ghuber", power))
    torch.testing.assert_close(got.detach(), expected, rtol=1e-10, atol=1e-12)
    numeric = central_difference_gradient(lambda w: (naive_elbo(w, x0, eps, t, ("ghuber", power)) * weights).sum(), v0)
    torch.testing.assert_close(v.grad, numeric, rtol=1e-6, atol=1e-9)


def test_ghuber_by_name_is_awms_default_power_and_power_one_is_t_linear():
    v, _, _, x0, eps, t, _ = batch()
    by_name = ek.elbo(v, x0, eps, t, weighting="ghuber", backend="torch")
    torch.testing.assert_close(by_name, ek.elbo(v, x0, eps, t, weighting=ek.ghuber(0.25), backend="torch"),
                               rtol=0, atol=0)
    torch.testing.assert_close(ek.elbo(v, x0, eps, t, weighting=ek.ghuber(1.0), backend="torch"),
                               ek.elbo(v, x0, eps, t, weighting="t_linear", backend="torch"), rtol=1e-12, atol=1e-12)
    assert weighting_record("ghuber", 0.5).power == 0.5


def test_t_linear_and_t_squared_are_awms_t_and_the_x0_space_error():
    v, _, _, x0, eps, t, _ = batch()
    mse = ((eps - x0.repeat_interleave(2, dim=0) - v) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(ek.elbo(v, x0, eps, t, weighting="t_linear", backend="torch"), -t * mse)
    torch.testing.assert_close(ek.elbo(v, x0, eps, t, weighting="t_squared", backend="torch"), -t * t * mse)


def test_the_old_name_t_still_means_t_squared_with_a_deprecation_warning():
    v, _, _, x0, eps, t, _ = batch()
    with pytest.warns(DeprecationWarning, match="'t' is deprecated: it means 't_squared'.*'t_linear'"):
        old = ek.elbo(v, x0, eps, t, weighting="t", backend="torch")
    torch.testing.assert_close(old, ek.elbo(v, x0, eps, t, weighting="t_squared", backend="torch"), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning):
        assert TrainConfig(weighting="t").validate().weighting == "t"


@pytest.mark.parametrize("power", [0, -0.5, float("nan"), float("inf"), True, "1/4"])
def test_ghuber_power_must_be_a_finite_positive_number(power):
    with pytest.raises(ValueError, match="power must be a finite number > 0"):
        ek.ghuber(power)


def test_power_is_refused_with_a_weighting_that_has_none():
    with pytest.raises(ValueError, match="weighting 'adaptive' takes none"):
        weighting_record("adaptive", 0.5)
    with pytest.raises(ValueError, match="conflicts with the weighting record 'ghuber'"):
        weighting_record(ek.ghuber(0.25), 0.5)


# ----------------------------------------------------------------------------- the anchor KL


def anchored(dtype=torch.float64, objective="grpo"):
    v0, v_old, v_ref, x0, eps, t, adv = batch(n=4, shape=(3, 5), b=2, objective=objective, dtype=dtype)
    g = torch.Generator().manual_seed(7)
    v_anchor = v0 + 0.2 * torch.randn(v0.shape, generator=g, dtype=dtype)
    t = t.clone()
    t[0] = 1.0  # AWM clamps t at 0.99 inside s(t): t = 1 must stay finite
    return v0, v_old, v_ref, x0, eps, t, adv, v_anchor


@pytest.mark.parametrize("anchor_kl", ["girsanov", "girsanov_sde"])
@pytest.mark.parametrize("kl", ["girsanov", "girsanov_sde", "kl2", None])
@pytest.mark.parametrize("backend", ["torch"] + FUSED)
def test_anchor_kl_in_one_call_matches_the_reference_in_value_and_gradient(anchor_kl, kl, backend):
    v0, v_old, v_ref, x0, eps, t, adv, v_anchor = anchored()
    kwargs = dict(objective="grpo", weighting="ghuber", kl=kl, beta=0.3, clip_range=0.02)
    anchor = dict(v_anchor=v_anchor, anchor_beta=0.7, anchor_kl=anchor_kl)
    v = v0.clone().requires_grad_()
    loss, stats = ek.policy_loss(v, v_old, v_ref, x0, eps, t, adv, backend=backend, **kwargs, **anchor)
    loss.backward()
    expected = naive_policy_loss(v0, v_old, v_ref, x0, eps, t, adv, **kwargs, **anchor)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-10, atol=1e-12)
    numeric = central_difference_gradient(
        lambda w: naive_policy_loss(w, v_old, v_ref, x0, eps, t, adv, v_sg=v0, **kwargs, **anchor), v0)
    torch.testing.assert_close(v.grad, numeric, rtol=1e-6, atol=1e-9)
    # The logged anchor term is the loss difference it makes.
    without = naive_policy_loss(v0, v_old, v_ref, x0, eps, t, adv, **kwargs)
    torch.testing.assert_close(0.7 * stats["kl_anchor"], expected - without, rtol=1e-9, atol=1e-12)


def test_anchor_off_is_the_loss_without_it_and_logs_zero():
    v0, v_old, v_ref, x0, eps, t, adv, v_anchor = anchored()
    plain, plain_stats = ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, backend="torch")
    off, off_stats = ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, v_anchor=v_anchor, anchor_beta=0.0,
                                    backend="torch")
    assert torch.equal(plain, off) and float(off_stats["kl_anchor"]) == 0.0 == float(plain_stats["kl_anchor"])


def test_girsanov_sde_divides_by_awms_sde_variance():
    v0, _, v_ref, x0, eps, t, adv, _ = anchored()
    _, girsanov = ek.policy_loss(v0, v0, v_ref, x0, eps, t, adv, kl="girsanov", beta=1.0, backend="torch")
    _, sde = ek.policy_loss(v0, v0, v_ref, x0, eps, t, adv, kl="girsanov_sde", beta=1.0, backend="torch")
    per_draw = ((v0 - v_ref) ** 2).flatten(1).mean(1)
    std = torch.sqrt(t / (1 - torch.clamp(t, 0, 0.99))) * 0.7  # AWM's std_dev_t
    torch.testing.assert_close(girsanov["kl"], per_draw.mean())
    torch.testing.assert_close(sde["kl"], (per_draw / (2 * std ** 2)).mean())


def test_bad_anchor_arguments_are_named():
    v0, v_old, v_ref, x0, eps, t, adv, v_anchor = anchored()
    with pytest.raises(ValueError, match="v_anchor is required for anchor_beta=0.5"):
        ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, anchor_beta=0.5, backend="torch")
    with pytest.raises(ValueError, match="unknown anchor_kl 'kl2'"):
        ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, v_anchor=v_anchor, anchor_beta=0.5, anchor_kl="kl2")
    with pytest.raises(ValueError, match="anchor_beta must be finite and >= 0"):
        ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, v_anchor=v_anchor, anchor_beta=-1.0)
    with pytest.raises(ValueError, match="v_anchor"):
        ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, v_anchor=v_anchor[:, :2], anchor_beta=0.5)
    bad = v_anchor.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="v_anchor"):
        ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, v_anchor=bad, anchor_beta=0.5, backend="torch")


# ----------------------------------------------------------------------------- AWM's timestep schedule


def test_grid_strata_draws_one_step_per_stratum_of_awms_geneval_range():
    """AWM's GenEval configs: 14 steps, int(14 * 0.9) = 12, 6 strata of steps 1..11 (step 0 is t = 1)."""
    grid = torch.cat([torch.linspace(1, 0.05, 14), torch.zeros(1)])  # a 14-step sigma grid, then 0
    t = sample_timesteps(4000, 6, sampler="grid_strata", grid=grid, first_step=1, last_step=12, generator=0)
    index = torch.cdist(t.reshape(-1, 1).double(), grid[:14].reshape(-1, 1).double()).argmin(1).reshape(4000, 6)
    # Edges floor(linspace(1, 12, 7)) = 1, 2, 4, 6, 8, 10, 12, written out by hand.
    strata = [(1, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    for k, (low, high) in enumerate(strata):
        column = index[:, k]
        assert int(column.min()) == low and int(column.max()) == high - 1
        for step in range(low, high):  # uniform within the stratum
            share = float((column == step).double().mean())
            assert abs(share - 1 / (high - low)) < 0.04, (k, step, share)
    assert not bool((t == 1).any())


def test_grid_strata_bad_ranges_are_named():
    grid = torch.linspace(1, 0, 15)
    with pytest.raises(ValueError, match="first_step and last_step must satisfy"):
        sample_timesteps(1, 2, sampler="grid_strata", grid=grid, first_step=5, last_step=5)
    with pytest.raises(ValueError, match="draws_per_sample=6 exceeds the 3 grid steps"):
        sample_timesteps(1, 6, sampler="grid_strata", grid=grid, first_step=1, last_step=4)
    with pytest.raises(ValueError, match="needs grid="):
        sample_timesteps(1, 2, sampler="grid_strata")


# ----------------------------------------------------------------------------- trainer options


@pytest.mark.parametrize("key,value,message", [
    ("ghuber_power", 0.0, "a finite number > 0"),
    ("anchor_beta", -1.0, "a finite number >= 0"),
    ("anchor_kl", "kl1", "one of 'girsanov', 'girsanov_sde'"),
    ("anchor_decay_max", 1.0, "a number in \\[0, 1\\)"),
    ("timestep_last_step", 11, "none or an int in \\(timestep_first_step, num_steps\\]"),
])
def test_trainer_option_errors_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=f"config key '{key}' has value .*; allowed: {message}"):
        TrainConfig(**{key: value, "timestep_sampler": "grid_strata"}).validate()


def test_anchor_needs_the_elbo_estimator_and_strata_need_enough_steps():
    with pytest.raises(ConfigError, match="'anchor_beta'.*estimator 'trajectory'"):
        TrainConfig(estimator="trajectory", sampler="sde", objective="grpo", anchor_beta=1.0).validate()
    with pytest.raises(ConfigError, match="'draws_per_sample'.*grid steps that 'grid_strata'"):
        TrainConfig(timestep_sampler="grid_strata", num_steps=4, draws_per_sample=4).validate()


def test_trainer_with_awms_options_keeps_an_anchor_adapter_blended_as_awm(tmp_path):
    cfg = small(tmp_path, "awm", epochs=2, objective="grpo", weighting="ghuber", ghuber_power=0.25,
                timestep_sampler="grid_strata", num_steps=6, draws_per_sample=2, timestep_last_step=5,
                anchor_beta=1.0, anchor_kl="girsanov", anchor_decay_rate=0.2, anchor_decay_max=0.3,
                kl="girsanov", beta=0.01, advantage_mode="standard", advantage_std="global", lr=0.05,
                checkpoint_every=0)
    trainer = Trainer(cfg)
    assert trainer.weighting.power == 0.25
    names = {n.split(".")[-2] for n, _ in trainer.transformer.named_parameters() if "lora_A" in n}
    assert "anchor" in names
    from elbo_kernels.models.lora import adapter_parameters

    def adapter(name):
        return {k: p.detach().clone() for k, p in adapter_parameters(trainer.transformer, name).items()}

    trainer.fit()
    history = [json.loads(line) for line in (tmp_path / "awm" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[1]["kl_anchor"] > 0
    assert history[0]["kl_anchor"] == pytest.approx(0.0, abs=1e-12)  # the anchor starts as the policy
    # AWM's "linear" decay after an epoch: anchor <- a anchor + (1 - a) current, a = min(0.2 * step, 0.3).
    anchor, current = adapter("anchor"), adapter("default")
    trainer.step = 1
    trainer.update_old_and_ema()
    for key, value in adapter("anchor").items():
        torch.testing.assert_close(value, 0.2 * anchor[key] + 0.8 * current[key], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- recorded old-policy ELBOs


@pytest.mark.parametrize("backend", ["torch"] + FUSED)
def test_elbo_old_recorded_earlier_gives_the_loss_of_v_old(backend):
    """AWM records the old policy's ELBOs before its updates; passing them equals passing v_old."""
    v0, v_old, v_ref, x0, eps, t, adv, v_anchor = anchored()
    kwargs = dict(objective="grpo", weighting="ghuber", kl="girsanov", beta=0.3, clip_range=0.02, v_anchor=v_anchor,
                  anchor_beta=0.7, backend=backend)
    recorded = ek.elbo(v_old, x0, eps, t, weighting="ghuber", backend="torch")
    grads, losses = [], []
    for old in (dict(v_old=v_old), dict(v_old=None, elbo_old=recorded)):
        v = v0.clone().requires_grad_()
        loss, stats = ek.policy_loss(v, old.pop("v_old"), v_ref, x0, eps, t, adv, **old, **kwargs)
        loss.backward()
        grads.append(v.grad)
        losses.append((loss.detach(), stats["clipfrac"], stats["approx_kl"]))
    for a, b in zip(*losses):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_elbo_old_errors_are_named():
    v0, v_old, v_ref, x0, eps, t, adv, _ = anchored()
    recorded = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass v_old or elbo_old"):
        ek.policy_loss(v0, v_old, v_ref, x0, eps, t, adv, elbo_old=recorded)
    with pytest.raises(ValueError, match="elbo_old cannot stand in for v_old with objective 'nft'"):
        ek.policy_loss(v0, None, v_ref, x0, eps, t, adv.clamp(0, 1), objective="nft", elbo_old=recorded)
    with pytest.raises(ValueError, match="elbo_old must have shape \\[4\\]"):
        ek.policy_loss(v0, None, v_ref, x0, eps, t, adv, elbo_old=recorded[:3])
    with pytest.raises(ValueError, match="elbo_old"):
        ek.policy_loss(v0, None, v_ref, x0, eps, t, adv, elbo_old=torch.full((4,), float("nan"), dtype=torch.float64))


# ----------------------------------------------------------------------------- advantages and the official configs


def test_standard_advantages_take_the_scale_so_that_awms_clip_then_divide_is_a_config():
    rewards = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.2, 0.9, 0.4, 0.4], dtype=torch.float64)
    prompts = ["a"] * 4 + ["b"] * 4
    scaled = ek.group_advantages(rewards, prompts, mode="standard", scale=0.2)
    expected = []
    for group in (rewards[:4], rewards[4:]):  # written out: (R - mean) / (population std + 1e-4)
        expected.append((group - group.mean()) / (group.std(unbiased=False) + 1e-4))
    expected = torch.cat(expected)
    torch.testing.assert_close(scaled, 0.2 * expected)
    # AWM: clip(A, -5, 5) * advantage_max / 5 with advantage_max 1 == clip(0.2 A, -1, 1)
    torch.testing.assert_close(scaled.clamp(-1, 1), expected.clamp(-5, 5) / 5)


@pytest.mark.parametrize("name,objective", [("diffusion_nft_geneval.yaml", "nft"), ("awm_geneval.yaml", "grpo")])
def test_official_configs_validate_and_are_the_design_space_methods(name, objective):
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    config = TrainConfig.from_yaml(root / "configs" / name).validate()
    assert config.objective == objective
    header = (root / "configs" / name).read_text().split("\n\n")[0]
    assert "commit" in header and "github.com/" in header  # the source is cited
    sys.path.insert(0, str(root / "benchmarks"))
    from design_space_methods import method_table

    entry = method_table()["diffusionnft" if objective == "nft" else "awm"]
    values = yaml.safe_load((root / "configs" / name).read_text())
    assert entry["published"] == (values.pop("lr"), values.pop("beta"))
    assert entry["overrides"] == values


def test_a_run_with_the_anchor_resumes_exactly(tmp_path):
    """The anchor adapter is checkpointed with the others: an interrupted run ends where a straight one does."""
    from safetensors.torch import load_file

    def anchor_weights(run_dir):
        summary = json.loads((run_dir / "summary.json").read_text())
        return load_file(f"{summary['final_checkpoint']}/adapters/anchor/adapter_model.safetensors")

    options = dict(objective="grpo", weighting="ghuber", anchor_beta=1.0, anchor_decay_rate=0.2, lr=0.05,
                   advantage_mode="standard")
    Trainer(small(tmp_path, "straight", **options)).fit()
    Trainer(small(tmp_path, "split", epochs=2, **options)).fit()
    Trainer(small(tmp_path, "split", resume=True, **options)).fit()
    straight, split = anchor_weights(tmp_path / "straight"), anchor_weights(tmp_path / "split")
    assert straight.keys() == split.keys() and straight
    for key in straight:
        assert torch.equal(straight[key], split[key]), key
    with pytest.raises(ResumeError, match="anchor_beta: checkpoint 1.0, now 0.5"):
        Trainer(small(tmp_path, "split", resume=True, **dict(options, anchor_beta=0.5))).fit()
