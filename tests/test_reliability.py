"""The trainer survives kill -9, NaN anywhere and broken rewards, and loses nothing (issue 7).

The harness is scripts/reliability_report.py (which also writes docs/reliability.md from the
full suite); these tests run its reduced form. Runs are tiny (4 prompts x 2 samples, K = 2,
checkpoint every epoch) and single-threaded, so that "bitwise" means the same thing in the
forked, in-process and command-line runs.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from elbo_kernels.train import NonFiniteError, TrainConfig, Trainer, faults
from elbo_kernels.train import policy_step
from elbo_kernels.train.checkpoint import COMPLETE, is_complete, latest_checkpoint, write_checkpoint
from elbo_kernels.train.state import save_state

_spec = importlib.util.spec_from_file_location(
    "reliability_report", Path(__file__).resolve().parents[1] / "scripts" / "reliability_report.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """(work directory, cached uninterrupted reference runs), single-threaded for bitwise comparisons."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reliability")
    yield root, harness.Reference(root)
    torch.set_num_threads(threads)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- kill -9 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["rollout", "backward", "checkpoint_write", "checkpoint_rename"])
def test_kill_9_then_resume_equals_an_uninterrupted_run_bitwise(suite, phase):
    result = harness.kill_trial(*suite, phase, epoch=3)
    assert result["exit"] == -9, result
    assert result["resumed_from"] == 2, result  # the last complete checkpoint, never a half-written one
    assert result["lost"] == [], result
    assert result["survived"], result


@pytest.mark.slow
def test_kill_9_of_the_command_line_then_resume_flag_equals_an_uninterrupted_run(suite):
    result = harness.kill_trial(*suite, "checkpoint_write", epoch=3, via_cli=True)
    assert result["exit"] in (-9, 137) and result["left_behind"], result  # killed with a half-written directory
    assert result["resumed_from"] == 2 and result["lost"] == [] and result["survived"], result


def test_same_seed_gives_bitwise_equal_checkpoints_and_the_comparison_can_fail(suite):
    root, reference = suite
    harness.train(root / "again")
    assert harness.differences(harness.final_state(root / "again"), reference.state()) == []
    assert harness.differences(reference.state(3), reference.state(4))  # the comparison is not vacuous


# --- checkpoints on disk ----------------------------------------------------------------------------
def fill(tmp):
    (tmp / "weights.bin").write_bytes(b"x" * 100)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "state.json").write_text("{}")


def test_half_written_or_truncated_checkpoints_are_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoint(root, 1, fill, keep=5)
    write_checkpoint(root, 2, fill, keep=5)
    (root / "epoch-000003").mkdir()  # renamed without a marker (cannot happen, but must not load)
    (root / "epoch-000003" / "weights.bin").write_bytes(b"x")
    tmp = root / ".tmp-epoch-000004-1"  # complete but never renamed into place
    tmp.mkdir()
    fill(tmp)
    (tmp / COMPLETE).write_text("ok\n")
    (root / "epoch-000002" / "weights.bin").write_bytes(b"x" * 10)  # truncated after the marker
    assert not is_complete(root / "epoch-000002")
    assert latest_checkpoint(root).name == "epoch-000001"


def test_a_crash_while_pruning_or_rewriting_leaves_a_complete_latest_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoint(root, 1, fill, keep=1)
    with faults.inject("raise:phase=checkpoint_prune:epoch=2"), pytest.raises(faults.FaultInjected):
        write_checkpoint(root, 2, fill, keep=1)
    assert latest_checkpoint(root).name == "epoch-000002"
    write_checkpoint(root, 2, fill, keep=1)  # rewriting an epoch moves the old one aside first
    assert [p.name for p in root.iterdir()] == ["epoch-000002"] and is_complete(root / "epoch-000002")


def test_a_checkpoint_never_holds_a_nan(tmp_path):
    trainer = Trainer(harness.config(tmp_path / "run", epochs=1), harness.digits_task())
    trainer.fit()
    checkpoints = tmp_path / "run" / "checkpoints"
    before = latest_checkpoint(checkpoints)
    state = trainer.optimizer.state_dict()["state"]
    next(iter(state.values()))["exp_avg"].view(-1)[0] = float("nan")
    with pytest.raises(RuntimeError, match="refusing to checkpoint: optimizer state 'exp_avg'"):
        save_state(trainer, {})
    next(iter(state.values()))["exp_avg"].view(-1)[0] = 0.0
    with torch.no_grad():
        trainer.parameters[0].view(-1)[0] = float("inf")
    with pytest.raises(RuntimeError, match="refusing to checkpoint: transformer parameter .*lora"):
        save_state(trainer, {})
    assert latest_checkpoint(checkpoints) == before


def test_resume_refuses_a_checkpoint_written_with_another_seed(suite, tmp_path):
    harness.train(tmp_path / "run", epochs=1)
    with pytest.raises(ValueError, match="seed: checkpoint 0, now 1"):
        harness.train(tmp_path / "run", resume=True, seed=1)


# --- non-finite values --------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", harness.NAN_PHASES)
def test_a_non_finite_value_skips_the_epoch_and_leaves_every_state_untouched(suite, phase):
    result = harness.nan_trial(*suite, phase, epoch=2)
    assert result["lost"] == [] and result["survived"], result
    assert f"skip_reason={harness.NAN_REASON[phase]!r}" in result["detail"]


def test_a_non_finite_input_error_of_the_ops_is_a_skip_not_a_crash(suite, tmp_path, monkeypatch):
    real = policy_step.POLICY_STEPS["elbo"]

    def nan_advantage_at_epoch_2(trainer, rollout, advantages, draws):
        if trainer._epoch_number == 2:
            advantages = advantages.clone()
            advantages[0] = float("nan")  # ek.policy_loss raises ValueError naming "advantages"
        return real(trainer, rollout, advantages, draws)

    monkeypatch.setitem(policy_step.POLICY_STEPS, "elbo", nan_advantage_at_epoch_2)
    harness.train(tmp_path / "run", epochs=2)
    last = records(tmp_path / "run")[-1]
    assert last["skipped"] and last["skip_reason"] == "loss" and "advantages" in last["skip_detail"]
    state = harness.final_state(tmp_path / "run")
    assert harness.differences(state, suite[1].state(1), ignore=("history", "epoch")) == []


def test_consecutive_skips_stop_the_run_with_a_clear_message(tmp_path):
    with pytest.raises(NonFiniteError, match=r"2 consecutive epochs skipped \(max_consecutive_skips=2\)"):
        harness.train(tmp_path / "run", fault="nan:phase=reward", max_consecutive_skips=2)
    assert [(r["epoch"], r["skipped"], r["skip_reason"]) for r in records(tmp_path / "run")] == [
        (1, True, "reward"), (2, True, "reward")]


def test_a_good_step_resets_the_skip_count(tmp_path):
    summary = harness.train(tmp_path / "run", fault="nan:phase=loss:epoch=1;nan:phase=loss:epoch=3",
                            max_consecutive_skips=2)
    assert summary["steps"] == 2 and summary["skipped_steps"] == 2


def test_on_non_finite_raise_stops_at_the_first_non_finite_value(tmp_path):
    with pytest.raises(NonFiniteError, match="epoch 2: the gradients held 1 non-finite value"):
        harness.train(tmp_path / "run", fault="nan:phase=grad:epoch=2", on_non_finite="raise")
    assert [r["skipped"] for r in records(tmp_path / "run")] == [False, True]


# --- broken rewards ---------------------------------------------------------------------------------
@pytest.mark.parametrize("garbage", ["raises", "wrong_length", "not_a_dict"])
def test_a_broken_reward_stops_with_a_clear_error_and_nothing_is_dropped(suite, garbage):
    result = harness.reward_trial(*suite, garbage, epoch=3)
    assert result["survived"], result
    assert "epoch 3" in result["detail"]


# --- configuration and fault specs ---------------------------------------------------------------------
@pytest.mark.parametrize("key,value,allowed", [
    ("on_non_finite", "ignore", "'skip', 'raise'"),
    ("max_consecutive_skips", 0, "an int >= 1"),
    ("plots", "yes", "true or false"),
    ("output_dir", "", "a non-empty string"),
    ("seed", 2 ** 63, "[0, 2**63)"),
])
def test_new_config_keys_are_validated_with_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ValueError) as info:
        TrainConfig(**{key: value}).validate()
    assert repr(key) in str(info.value) and repr(value) in str(info.value) and allowed in str(info.value)


def test_an_unknown_reward_fails_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError, match="config key 'reward' has value 'nope'; allowed: one of 'digit'"):
        Trainer(TrainConfig(output_dir=str(tmp_path), reward="nope"))
    assert not tmp_path.joinpath("config.yaml").exists()


@pytest.mark.parametrize("spec,message", [
    ("explode:phase=rollout", "allowed: kill, raise, nan"),
    ("kill:phase=nowhere", "allowed with action 'kill'"),
    ("nan:phase=rollout", "allowed with action 'nan'"),
    ("kill:phase=rollout:epoch=three", "epoch='three'"),
    ("kill:phase=rollout:when=now", "allowed: phase=NAME"),
])
def test_bad_fault_specs_name_the_part_and_what_is_allowed(spec, message):
    with pytest.raises(ValueError, match="ELBO_KERNELS_FAULT") as info:
        faults.parse(spec)
    assert message in str(info.value)


# --- several processes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_nan_on_one_process_skips_the_epoch_on_every_process_without_deadlock(suite):
    result = harness.multiprocess_trial(suite[0], "nan:phase=velocity:epoch=2:process=1")
    assert result["survived"], result
    assert "another process" in result["detail"]  # logged by process 0, which saw no NaN itself
