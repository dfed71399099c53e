"""Trainer configuration: YAML, overrides, and validation before any work."""

import argparse

import pytest

from elbo_kernels.train.config import TrainConfig, add_arguments, config_from_args


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_are_the_recommended_recipe():
    cfg = TrainConfig().validate()
    assert (cfg.estimator, cfg.objective, cfg.weighting, cfg.sampler, cfg.guidance_scale) == (
        "elbo", "pepg", "adaptive", "ode", 1.0)
    assert cfg.lora_rank > 0


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    TrainConfig(epochs=7, lr=0.01, kl=None).save_yaml(path)
    cfg = parse(["--config", str(path), "--lr", "0.002", "--progress", "false"])
    assert cfg.epochs == 7 and cfg.lr == 0.002 and cfg.kl is None and cfg.progress is False


def test_kl_none_from_the_command_line():
    assert parse(["--kl", "none"]).kl is None


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("lr", 0.0, "> 0"),
        ("lr", -1e-3, "> 0"),
        ("objective", "ppo", "one of"),
        ("weighting", "sigmoid", "one of"),
        ("kl", "k9", "one of"),
        ("estimator", "mc", "one of"),
        ("epochs", 0, ">= 1"),
        ("beta", float("nan"), ">= 0"),
        ("ema_decay", 1.0, "[0, 1)"),
        ("draws_per_sample", 11, "larger than the step grid"),
        ("guidance_scale", 0.5, ">= 1"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{key: value}).validate()
    message = str(info.value)
    assert repr(key) in message and repr(value) in message and allowed in message


def test_group_of_one_with_standardised_advantages_is_rejected():
    with pytest.raises(ValueError, match="'group_size' has value 1"):
        TrainConfig(group_size=1, advantage_mode="standard").validate()
    TrainConfig(group_size=1, advantage_mode="exact").validate()


def test_trajectory_estimator_needs_sde_rollouts():
    with pytest.raises(ValueError, match="'sampler'"):
        TrainConfig(estimator="trajectory", objective="grpo").validate()
    TrainConfig(estimator="trajectory", objective="grpo", sampler="sde").validate()


def test_nft_objective_needs_nft_advantages():
    with pytest.raises(ValueError, match="advantage_mode"):
        TrainConfig(objective="nft").validate()
