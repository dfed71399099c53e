"""Objective, weighting and advantage-mode records drive validation, the loss and the trainer.

A new objective is one row of OBJECTIVES: the tests below add one and check that the config,
the loss and the log-probability loss validate it by its record alone (no string lists elsewhere).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import elbo_kernels as ek
from elbo_kernels.advantages import ADVANTAGE_MODE_RECORDS, ADVANTAGE_MODES, PerPromptStatTracker
from elbo_kernels.estimators import ESTIMATORS, Weighting, weighting_record
from elbo_kernels.estimators.elbo import WEIGHTING_RECORDS, elbo_from_moments
from elbo_kernels.objectives import OBJECTIVES, Objective, log_prob_policy_loss, objective_record, policy_loss
from elbo_kernels.objectives.table import pepg
from elbo_kernels.train.config import TrainConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# --- objective records ---------------------------------------------------------------------------------
def test_the_records_say_what_each_objective_of_the_study_needs():
    # The study's objectives (docs/design.md section 2): only epg_noratio and awm never read e_old;
    # nft alone takes probabilities and blended velocities; nft and awm are ELBO-only methods.
    assert {n for n, r in OBJECTIVES.items() if not r.needs_old_policy} == {"epg_noratio", "awm"}
    assert {n for n, r in OBJECTIVES.items() if r.advantage_kind == "probability"} == {"nft"}
    assert {n for n, r in OBJECTIVES.items() if r.blend} == {"nft"}
    assert {n for n, r in OBJECTIVES.items() if "trajectory" in r.estimators} == {
        "epg", "epg_noratio", "pepg", "pepg_noratio", "par", "par_noratio", "grpo"}
    assert all(r.name == n and "elbo" in r.estimators for n, r in OBJECTIVES.items())


def test_a_record_is_the_per_draw_loss():
    draws = ek.objectives.table.Draws(e_theta=torch.tensor([-1.0, -2.0]), e_old=torch.tensor([-1.5, -2.0]),
                                      advantages=torch.tensor([0.5, -1.0]), clip_range=0.1, adv_clip_max=5.0,
                                      nft_beta=1.0)
    rho = torch.exp(torch.tensor([0.5, 0.0]))
    expected = -rho * (torch.tensor([0.5, -1.0]) - torch.tensor([0.5, 0.0])) * torch.tensor([-1.0, -2.0])
    torch.testing.assert_close(OBJECTIVES["pepg"](draws), expected)


def test_unknown_objective_and_bad_records_are_named():
    with pytest.raises(ValueError, match="objective 'ppo'"):
        objective_record("ppo")
    with pytest.raises(ValueError, match="advantage_kind"):
        Objective("x", pepg, advantage_kind="positive")
    with pytest.raises(ValueError, match="estimators"):
        Objective("x", pepg, estimators=("mc",))


@pytest.fixture
def new_objective(monkeypatch):
    """Adds a row to the table: pepg on probabilities, ELBO only, without the old policy."""
    record = Objective("pepg_probability", pepg, needs_old_policy=False, advantage_kind="probability",
                       estimators=("elbo",))
    monkeypatch.setitem(OBJECTIVES, record.name, record)
    return record


def test_a_new_objective_is_validated_by_its_record_in_the_config(new_objective):
    TrainConfig(objective=new_objective.name, advantage_mode="nft").validate()
    with pytest.raises(ValueError, match="'advantage_mode' has value 'exact'.*'nft'"):
        TrainConfig(objective=new_objective.name, advantage_mode="exact").validate()
    with pytest.raises(ValueError, match="'objective' has value 'pepg_probability'"):
        TrainConfig(objective=new_objective.name, advantage_mode="nft", estimator="trajectory",
                    sampler="sde").validate()


def test_a_new_objective_lists_among_those_allowed_for_its_estimators(new_objective):
    with pytest.raises(ValueError) as info:
        TrainConfig(objective="awm", estimator="trajectory", sampler="sde").validate()
    assert "'pepg_probability'" not in str(info.value) and "'grpo'" in str(info.value)
    with pytest.raises(ValueError) as info:
        TrainConfig(objective="ppo").validate()
    assert "'pepg_probability'" in str(info.value)


def _inputs(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps, v = (torch.randn(n, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return v, x0, eps, t


def test_a_new_objective_is_validated_by_its_record_in_the_loss(new_objective):
    v, x0, eps, t = _inputs()
    advantages = torch.tensor([0.1, 0.9, 0.5, 0.0], dtype=torch.float64)
    loss, _ = policy_loss(v, None, None, x0, eps, t, advantages, objective=new_objective.name, kl=None,
                          backend="torch")
    # Without the old policy e_old = stopgrad(e_theta): pepg reduces to -A e_theta.
    e = ek.elbo(v, x0, eps, t, backend="torch")
    torch.testing.assert_close(loss, (-advantages * e).mean())
    with pytest.raises(ValueError, match="optimality probabilities"):
        policy_loss(v, None, None, x0, eps, t, advantages + 1, objective=new_objective.name, kl=None,
                    backend="torch")


@pytest.mark.parametrize("objective", ["pepg", "nft", "awm"])
def test_the_loss_takes_records_resolved_once_as_it_takes_names(objective):
    v, x0, eps, t = _inputs()
    g = torch.Generator().manual_seed(3)
    v_old, v_ref = (v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype) for _ in range(2))
    advantages = torch.tensor([0.1, 0.9, 0.5, 0.0], dtype=torch.float64)
    by_name = policy_loss(v, v_old, v_ref, x0, eps, t, advantages, objective=objective, weighting="t_squared",
                          backend="torch")
    by_record = policy_loss(v, v_old, v_ref, x0, eps, t, advantages, objective=objective_record(objective),
                            weighting=weighting_record("t_squared"), backend="torch")
    torch.testing.assert_close(by_record[0], by_name[0], rtol=0, atol=0)
    assert by_record[1].keys() == by_name[1].keys()


def test_the_old_policy_is_required_by_record(monkeypatch):
    v, x0, eps, t = _inputs()
    monkeypatch.setitem(OBJECTIVES, "pepg_on_policy", Objective("pepg_on_policy", pepg))
    with pytest.raises(ValueError, match="v_old is required for objective 'pepg_on_policy'"):
        policy_loss(v, None, None, x0, eps, t, torch.zeros(4, dtype=torch.float64), objective="pepg_on_policy",
                    kl=None, backend="torch")


def test_log_prob_loss_refuses_objectives_that_need_blended_velocities(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "blended", Objective("blended", pepg, blend=True, estimators=("elbo",)))
    log_prob = torch.tensor([-1.0, -2.0])
    with pytest.raises(ValueError, match="unknown objective 'blended'"):
        log_prob_policy_loss(log_prob, log_prob, torch.zeros(2), objective="blended")
    log_prob_policy_loss(log_prob, log_prob, torch.zeros(2), objective="awm")


def _design_space():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import design_space

    return design_space


@pytest.mark.parametrize("quick", [False, True])
def test_every_config_of_the_design_space_study_validates(tmp_path, quick):
    study = _design_space()
    scale = dict(prompts_per_epoch=2, group_size=4) if quick else {}  # as design_space.py --quick
    for task in ("digiteval", "digit_geneval"):
        for name, method in study.method_table().items():
            lr, beta = method["published"]
            job = dict(method=name, output_dir=str(tmp_path / name), seed=0, lr=lr, beta=beta,
                       epochs=method["epochs"], eval_every=5, eval_seeds=2, scale=scale,
                       overrides=dict(method["overrides"], task=task))
            config = study.resolve_config(job)
            assert config["objective"] in OBJECTIVES and config["estimator"] in ESTIMATORS
            assert config["task"] == task


# --- weighting records -----------------------------------------------------------------------------------
def _naive_weighting(name, mean_abs, mean_sq, t):
    # Independent of estimators/elbo.py: the module docstring's formulas written out.
    if name == "simple":
        return -mean_sq
    if name == "t_squared":
        return -(t * t) * mean_sq
    if name == "t_linear":
        return -t * mean_sq
    if name == "ghuber":  # AWM's generalised Huber at its default power 1/4
        return -t * (torch.sqrt(torch.sqrt(mean_sq + 1e-10)) - 1e-10 ** 0.25) * 4
    if name == "path_kl":
        return -(1 - t) / (t + 1e-3) * mean_sq
    return -(t * t) * mean_sq / torch.clamp(t * mean_abs, min=1e-5)


@pytest.mark.parametrize("name", list(ek.WEIGHTINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_weighting_record_matches_its_formula(name, dtype):
    g = torch.Generator().manual_seed(1)
    mean_abs = torch.rand(7, generator=g, dtype=dtype) + 1e-6
    mean_sq = torch.rand(7, generator=g, dtype=dtype)
    t = torch.rand(7, generator=g, dtype=dtype) * 0.99 + 0.01
    expected = _naive_weighting(name, mean_abs, mean_sq, t)
    tolerance = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    record = weighting_record(name)
    assert isinstance(record, Weighting) and record.name == name
    torch.testing.assert_close(record(mean_abs, mean_sq, t), expected, **tolerance)
    torch.testing.assert_close(elbo_from_moments(mean_abs, mean_sq, t, name), expected, **tolerance)
    torch.testing.assert_close(elbo_from_moments(mean_abs, mean_sq, t, record), expected, **tolerance)


def test_weighting_names_are_the_records_and_unknown_ones_are_named():
    assert tuple(WEIGHTING_RECORDS) == ek.WEIGHTINGS
    with pytest.raises(ValueError, match="unknown weighting 'sigmoid'"):
        weighting_record("sigmoid")
    with pytest.raises(ValueError, match="unknown weighting 'sigmoid'"):
        elbo_from_moments(torch.ones(1), torch.ones(1), torch.ones(1), "sigmoid")


# --- one advantage vocabulary ------------------------------------------------------------------------------
def _naive_advantages(rewards, groups, mode, scale, m):
    """Per-group formulas in plain Python floats (module docstring of advantages/modes.py)."""
    out = [0.0] * len(rewards)
    for g in set(groups):
        rows = [i for i, h in enumerate(groups) if h == g]
        values = [rewards[i] for i in rows]
        mean = sum(values) / len(values)
        std = (sum((r - mean) ** 2 for r in values) / len(values)) ** 0.5
        flat = max(values) == min(values)
        for i in rows:
            centred = 0.0 if flat else rewards[i] - mean
            standard = centred / (std + 1e-4)
            out[i] = {"standard": scale * standard, "exact": scale * centred, "rwr": rewards[i],
                      "nft": min(max(standard, -m), m) / m / 2 + 0.5}[mode]
    return out


REWARDS = [0.2, 0.9, 0.4, 0.4, 0.4, 3.0, -1.0, 0.0, 7.0, 0.5]
GROUPS = ["a", "a", "b", "b", "b", "c", "c", "a", "c", "d"]


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_group_advantages_and_the_tracker_agree_with_the_formulas(mode):
    expected = np.array(_naive_advantages(REWARDS, GROUPS, mode, 0.1, 1.5))
    grouped = ek.group_advantages(torch.tensor(REWARDS, dtype=torch.float64), GROUPS, mode=mode, scale=0.1,
                                  adv_clip_max=1.5)
    tracked = PerPromptStatTracker(scale=0.1, adv_clip_max=1.5).update(GROUPS, REWARDS, type=mode)
    np.testing.assert_allclose(grouped.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tracked, expected, rtol=1e-12, atol=1e-12)


def test_the_tracker_keeps_flowgrpo_names_and_raw_rewards():
    standard = PerPromptStatTracker().update(GROUPS, REWARDS, type="standard")
    np.testing.assert_array_equal(PerPromptStatTracker().update(GROUPS, REWARDS, type="grpo"), standard)
    np.testing.assert_array_equal(PerPromptStatTracker().update(GROUPS, REWARDS), standard)
    np.testing.assert_array_equal(PerPromptStatTracker().update(GROUPS, REWARDS, type="rwr"), REWARDS)
    with pytest.raises(ValueError, match="unknown type 'ppo'"):
        PerPromptStatTracker().update(GROUPS, REWARDS, type="ppo")
    with pytest.raises(ValueError, match="unknown mode 'rwr'"):
        ek.group_advantages(torch.tensor(REWARDS), GROUPS, mode="rwr")


def test_every_trainer_advantage_mode_is_a_tracker_mode_with_a_record():
    assert set(ADVANTAGE_MODES) <= set(ADVANTAGE_MODE_RECORDS)
    for mode in ADVANTAGE_MODES:
        PerPromptStatTracker().update(["a", "a"], [0.0, 1.0], type=mode)


# --- one definition per vocabulary ---------------------------------------------------------------------------
def test_sde_types_and_ode_methods_are_defined_once():
    from elbo_kernels import estimators, sampling
    from elbo_kernels.train import config

    assert sampling.SDE_TYPES is estimators.SDE_TYPES is config.SDE_TYPES
    assert config.ODE_METHODS is sampling.ODE_METHODS
    assert config.ESTIMATORS is estimators.ESTIMATORS
