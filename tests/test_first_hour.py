"""What a new user meets in the first hour (issue 26): the command line explains itself, commands run in
any order, resume says what it does, and the Python API speaks Python.

Runs go through ``elbo_kernels.cli.main`` in this process (what the ``elbo-kernels`` script runs), in a
fresh working directory, cut to a few tiny epochs.
"""

import json
import subprocess
import sys

import pytest
import torch

from elbo_kernels import cli
from elbo_kernels._argparse import spelled, suggestion
from elbo_kernels.train import TrainConfig, errors, train
from elbo_kernels.train.errors import OutputDirError

TINY = ["--epochs", "3", "--prompts_per_epoch", "4", "--group_size", "2", "--draws_per_sample", "2",
        "--eval_every", "1", "--eval_seeds", "2", "--plots", "false", "--report_to", "none", "--progress", "false",
        "--backend", "torch"]


@pytest.fixture(autouse=True)
def fresh_directory(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    yield tmp_path
    torch.set_num_threads(threads)


def train_cli(capsys, *flags):
    """(exit code, stdout, stderr) of ``elbo-kernels train <tiny run> FLAGS``."""
    code = cli.main(["train", *TINY, *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def checkpoints(directory):
    return sorted(p.name for p in (directory / "checkpoints").iterdir())


# --- the parser --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("typed,meant", [("--epoch", "--epochs"), ("--lrr", "--lr"), ("--learning_rate", "--lr"),
                                         ("--learning-rate", "--lr"), ("--output_dri", "--output_dir")])
def test_a_mistyped_train_flag_shows_trains_usage_and_the_flag_meant(capsys, typed, meant):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", typed, "2"])
    err = capsys.readouterr().err
    assert info.value.code == errors.EXIT_USAGE
    assert err.startswith("usage: elbo-kernels train ")
    assert f"unrecognized arguments: {typed} 2 (did you mean {meant}?)" in err


def test_a_flag_far_from_any_gets_no_guess():
    assert suggestion("--zzzzzz", ["--epochs", "--lr"]) is None


def test_flags_take_dashes_or_underscores_and_values_are_untouched():
    known = ["--output_dir", "--flow_grpo"]
    assert spelled("--output-dir", known) == "--output_dir"
    assert spelled("--output-dir=a-b_c", known) == "--output_dir=a-b_c"
    assert spelled("--flow-grpo", known) == "--flow_grpo"
    assert spelled("my-value", known) == "my-value" and spelled("--unknown-flag", known) == "--unknown-flag"


def test_the_dashed_spelling_of_a_train_flag_runs(capsys, fresh_directory):
    code, _, err = train_cli(capsys, "--output-dir", "run", "--epochs", "1", "--stop-at", "none")
    assert code == 0, err
    assert (fresh_directory / "run" / "summary.json").is_file()


def test_version_and_bare_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"elbo-kernels {cli.package_version()}"
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: elbo-kernels") and "train" in out and "info" in out


def test_train_help_is_grouped_with_choices_flags_and_one_deprecated_group(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for group in ("what to train, on what, where:", "rollouts (with the old policy):", "optimisation:",
                  "likelihood estimator and objective:", "evaluation, logging, checkpoints:",
                  "deprecated (still accepted):"):
        assert f"\n{group}\n" in out, group
    assert "--objective {epg,epg_noratio,pepg," in out and "--sampler {ode,sde}" in out
    assert "--resume [RESUME]" not in out and "\n  --resume " in out
    deprecated = out.split("deprecated (still accepted):")[1]
    assert "--tensorboard" in deprecated and "--tensorboard" not in out.split("deprecated (still accepted):")[0] \
        .split("options:")[1]
    assert "(the older" not in out


# --- output directories --------------------------------------------------------------------------------------
def test_default_output_directories_are_per_task_and_per_run(capsys, fresh_directory):
    outputs = fresh_directory / "outputs"
    assert train_cli(capsys, "--epochs", "1")[0] == 0
    assert train_cli(capsys, "--epochs", "1", "--task", "digit_geneval", "--eval_every", "0")[0] == 0
    code, out, _ = train_cli(capsys, "--epochs", "1")
    assert code == 0
    assert "outputs/digiteval holds an earlier run: this run writes to outputs/digiteval-2" in out
    assert "summary: outputs/digiteval-2/summary.json" in out
    assert sorted(p.name for p in outputs.iterdir()) == ["digit_geneval", "digiteval", "digiteval-2"]
    assert TrainConfig.from_yaml(outputs / "digiteval-2" / "config.yaml").output_dir == "outputs/digiteval-2"


def test_a_given_output_dir_holding_a_run_is_still_refused(capsys, fresh_directory):
    assert train_cli(capsys, "--epochs", "1", "--output_dir", "mine")[0] == 0
    code, _, err = train_cli(capsys, "--epochs", "1", "--output_dir", "mine")
    assert code == errors.EXIT_USAGE and "pass --resume to continue it, --overwrite to delete it" in err


def test_the_python_api_names_python_arguments_not_flags(fresh_directory):
    config = dict(epochs=1, prompts_per_epoch=4, group_size=2, draws_per_sample=2, eval_every=0, eval_seeds=2,
                  plots=False, report_to="none", progress=False, backend="torch", output_dir="mine")
    train(TrainConfig(**config))
    with pytest.raises(OutputDirError) as info:
        train(TrainConfig(**config))
    message = str(info.value)
    assert "resume=True" in message and "overwrite=True" in message and "output_dir=..." in message
    assert "--" not in message


# --- stopping and resuming -------------------------------------------------------------------------------------
def test_a_run_stopped_by_stop_at_says_so_in_its_last_lines(capsys, fresh_directory):
    code, out, _ = train_cli(capsys, "--output_dir", "run", "--stop_at", "0.05")
    assert code == 0
    summary = json.loads((fresh_directory / "run" / "summary.json").read_text())
    last = out.strip().splitlines()[-3:]
    assert last[0] == f"stopped early at epoch {summary['epochs']} of 3: digiteval " \
                      f"{summary['digiteval_after']:.3f} reached stop_at 0.05"
    assert summary["epochs"] < 3


def test_resume_says_which_checkpoint_it_continues(capsys, fresh_directory):
    assert train_cli(capsys, "--output_dir", "run", "--stop_at", "none", "--epochs", "2")[0] == 0
    code, out, _ = train_cli(capsys, "--output_dir", "run", "--stop_at", "none", "--resume")
    assert code == 0
    assert "resuming from run/checkpoints/epoch-000002 (epoch 2 of 3)" in out
    assert checkpoints(fresh_directory / "run")[-1] == "epoch-000003"


def test_resuming_a_finished_run_changes_nothing(capsys, fresh_directory):
    run = fresh_directory / "run"
    assert train_cli(capsys, "--output_dir", "run", "--stop_at", "none")[0] == 0
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    code, out, _ = train_cli(capsys, "--output_dir", "run", "--stop_at", "none", "--resume")
    assert code == 0
    assert "the run in run finished at epoch 3 (epochs 3 done): nothing to do, nothing changed" in out
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_resuming_a_finished_run_with_a_higher_limit_continues_it(capsys, fresh_directory):
    assert train_cli(capsys, "--output_dir", "run", "--stop_at", "none", "--epochs", "2")[0] == 0
    code, out, _ = train_cli(capsys, "--output_dir", "run", "--stop_at", "none", "--resume")  # epochs 3 now
    assert code == 0 and "resuming from" in out
    assert json.loads((fresh_directory / "run" / "summary.json").read_text())["epochs"] == 3


def test_resume_without_output_dir_continues_the_newest_default_run(capsys, fresh_directory):
    assert train_cli(capsys, "--epochs", "1", "--stop_at", "none")[0] == 0
    assert train_cli(capsys, "--epochs", "1", "--stop_at", "none")[0] == 0
    code, out, _ = train_cli(capsys, "--stop_at", "none", "--epochs", "2", "--resume")
    assert code == 0 and "output_dir: outputs/digiteval-2" in out
    assert checkpoints(fresh_directory / "outputs" / "digiteval-2")[-1] == "epoch-000002"
    assert checkpoints(fresh_directory / "outputs" / "digiteval")[-1] == "epoch-000001"


# --- your own reward -------------------------------------------------------------------------------------------
def test_a_reward_module_in_the_current_directory_is_found_without_pythonpath(fresh_directory):
    (fresh_directory / "my_local_rewards.py").write_text(
        "def darkness(images, prompts, metadata):\n    return {'avg': 1 - images.float().flatten(1).mean(1)}, {}\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    code = ("import sys, torch; from elbo_kernels.rewards import load_reward; "
            "scores, _ = load_reward('my_local_rewards:darkness')(torch.zeros(2, 1, 4, 4), ['a', 'b'], None); "
            "print(scores['avg'].tolist())")
    # The console script's sys.path holds its bin directory, not the current one: mimic it with -I.
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=fresh_directory, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[1.0, 1.0]"
