"""The command line reports an error a user can act on in one line, with an exit code per class (issue 12).

Most cases call ``elbo_kernels.cli.main`` in this process (what the ``elbo-kernels`` script
runs); the disk cases run the real command on a real full or read-only filesystem (a tmpfs in
a user namespace: ``unshare -rm``), and are skipped, saying why, where that is not allowed.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elbo_kernels import cli
from elbo_kernels.models import digits
from elbo_kernels.train import errors, faults

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--prompts_per_epoch", "4", "--group_size", "2", "--draws_per_sample", "2",
        "--eval_every", "0", "--eval_seeds", "1", "--checkpoint_every", "1", "--plots", "false",
        "--tensorboard", "false", "--progress", "false", "--backend", "torch"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv(faults.ENV, raising=False)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    yield
    torch.set_num_threads(threads)


def run(capsys, out, *flags):
    """(exit code, stderr) of ``elbo-kernels train --output_dir OUT <tiny run> FLAGS``."""
    code = cli.main(["train", "--output_dir", str(out), *TINY, *flags])
    return code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# --- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,expected", [
    (["--objective", "foo"], "config key 'objective' has value 'foo'; allowed: one of 'epg'"),
    (["--lr", "-1"], "config key 'lr' has value -1.0; allowed: a finite number > 0"),
    (["--epochs", "0"], "config key 'epochs' has value 0; allowed: an int >= 1"),
    (["--config", "/nonexistent/run.yaml"], "config file /nonexistent/run.yaml cannot be read"),
    (["--resume", "--overwrite"], "config key 'overwrite' has value True; allowed: false with resume"),
])
def test_config_errors_are_one_line_with_exit_code_2(capsys, tmp_path, flags, expected):
    code, stderr = run(capsys, tmp_path / "run", *flags)
    assert code == errors.EXIT_USAGE
    assert expected in error_line(stderr)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_unknown_yaml_key_is_one_line(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochz: 3\n")
    code, stderr = run(capsys, tmp_path / "run", "--config", str(config))
    assert code == errors.EXIT_USAGE and "unknown config key(s) ['epochz']" in error_line(stderr)


def test_abbreviated_flags_are_rejected_not_expanded(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--output_dir", str(tmp_path / "run"), "--epoch", "3"])
    assert info.value.code == 2
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- output directories (items 3 and 4) -----------------------------------------------------------------
def test_a_run_refuses_a_directory_holding_another_run_and_leaves_it_intact(capsys, tmp_path):
    out = tmp_path / "digits"
    assert run(capsys, out, "--epochs", "3")[0] == 0  # the "finished" run
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, stderr = run(capsys, out, "--epochs", "2")
    assert code == errors.EXIT_USAGE
    assert f"output_dir {out} holds another run" in error_line(stderr) and "--overwrite" in stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_the_old_run_and_the_summary_names_a_checkpoint_that_loads(capsys, tmp_path):
    out = tmp_path / "digits"
    assert run(capsys, out, "--epochs", "3")[0] == 0
    (out / "notes.txt").write_text("mine")  # not a run file: never deleted
    assert run(capsys, out, "--epochs", "1", "--overwrite")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and Path(summary["final_checkpoint"]).name == "epoch-000001"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-000001"]
    assert (out / "notes.txt").read_text() == "mine"
    digits.load_pipeline(adapter=out)


def test_resume_with_nothing_to_resume_says_it_starts_fresh(capsys, tmp_path):
    code, stderr = run(capsys, tmp_path / "run", "--epochs", "1", "--resume")
    assert code == 0
    assert f"warning: nothing to resume in {tmp_path / 'run'} (no checkpoint): starting a fresh run" in stderr


def test_resume_after_changing_group_size_is_one_line_with_exit_code_3(capsys, tmp_path):
    assert run(capsys, tmp_path / "run", "--epochs", "1")[0] == 0
    code, stderr = run(capsys, tmp_path / "run", "--resume", "--group_size", "4")
    assert code == errors.EXIT_RESUME and "group_size: checkpoint 2, now 4" in error_line(stderr)


# --- errors of the run itself --------------------------------------------------------------------------
def test_a_reward_error_is_one_line_with_exit_code_5(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "raise:phase=reward:epoch=2")
    code, stderr = run(capsys, tmp_path / "run")
    assert code == errors.EXIT_REWARD and "the reward function failed on 8 images of epoch 2" in error_line(stderr)


def test_a_non_finite_error_is_one_line_with_exit_code_6(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan:phase=loss:epoch=1")
    code, stderr = run(capsys, tmp_path / "run", "--on_non_finite", "raise")
    assert code == errors.EXIT_NON_FINITE and "epoch 1: the loss is nan" in error_line(stderr)


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "raise:phase=reward:epoch=1")
    code, stderr = run(capsys, tmp_path / "run", "--debug")
    assert code == errors.EXIT_REWARD and "Traceback" in stderr and "RewardError" in stderr


def test_a_bug_shows_the_traceback_and_asks_for_a_report(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "raise:phase=rollout:epoch=1")  # an unexpected RuntimeError
    code, stderr = run(capsys, tmp_path / "run")
    assert code == errors.EXIT_BUG
    assert "Traceback" in stderr and "FaultInjected" in stderr and "a bug in elbo_kernels; please report" in stderr


@pytest.mark.slow
def test_missing_model_weights_are_one_line_with_exit_code_7(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "elbo_kernels.cli", "train", "--output_dir", str(tmp_path / "r"),
                             "--model", str(tmp_path / "no-such-model")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == errors.EXIT_MODEL, result.stderr[-3000:]
    assert "no-such-model" in error_line(result.stderr)


# --- disks: full and read-only (item 2) -----------------------------------------------------------------
def namespace_with_tmpfs():
    """Why a tmpfs cannot be mounted in a user namespace here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"


def run_on_tmpfs(tmp_path, size: str, script: str) -> subprocess.CompletedProcess:
    """``script`` (sh) with $MNT a fresh tmpfs of ``size`` and $TRAIN the tiny training command."""
    why = namespace_with_tmpfs()
    if why:
        pytest.skip(why)
    mount = tmp_path / "mnt"
    mount.mkdir()
    train = " ".join([sys.executable, "-m", "elbo_kernels.cli", "train", *TINY])
    env = dict(os.environ, MNT=str(mount), TRAIN=train, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs $MNT && {script}"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_path_and_the_free_space(tmp_path):
    # One tiny checkpoint is ~470 KiB: the second does not fit in 700 KiB.
    result = run_on_tmpfs(tmp_path, "700k", "$TRAIN --epochs 3 --keep_checkpoints 3 --output_dir $MNT/run; "
                                             "echo exit=$?; ls -a $MNT/run/checkpoints")
    assert "exit=4" in result.stdout, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert f"cannot write checkpoint epoch-000002 in {tmp_path / 'mnt' / 'run' / 'checkpoints'}" in line
    assert "no space left on device" in line and "free on that filesystem" in line
    assert "the last complete checkpoint (epoch-000001) is intact" in line
    assert result.stdout.split()[-3:] == [".", "..", "epoch-000001"]  # the half-written one was removed


def test_a_read_only_output_directory_is_one_line_naming_the_path(tmp_path):
    result = run_on_tmpfs(tmp_path, "1m", "mount -o remount,ro $MNT && $TRAIN --output_dir $MNT/run; echo exit=$?")
    assert "exit=4" in result.stdout, result.stderr[-3000:]
    assert f"cannot write {tmp_path / 'mnt' / 'run'}: Read-only file system" in error_line(result.stderr)
