"""Preemption (issue 24): SIGTERM, SIGINT or SIGUSR1 stops a run with a verified checkpoint, one line
and exit code 75, and ``--resume auto`` continues it to the same bits as an uninterrupted run.

The signals are real (os.kill): sent by the process to itself at a chosen point of an epoch (the
fault hooks, faults.py), or from outside at a seeded random moment. Before, a signal killed the
run (SIGTERM, SIGUSR1) or raised KeyboardInterrupt (SIGINT) and everything since the last
periodic checkpoint was lost.
"""

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elbo_kernels._checksums import verify
from elbo_kernels.train import TrainConfig
from elbo_kernels.train.checkpoint import latest_checkpoint
from elbo_kernels.train.errors import EXIT_PREEMPTED, Preempted, ResumeError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reliability_report", ROOT / "scripts" / "reliability_report.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

# Periodic checkpoints every 3 epochs: a stop in epoch 1 or 2 must write its own.
SPARSE = dict(checkpoint_every=3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield harness.Reference(tmp_path_factory.mktemp("preemption"))
    torch.set_num_threads(threads)


# (signal, phase, epoch, the checkpoint the stop leaves): before the optimizer step the epoch is
# abandoned (the checkpoint holds the epoch before), after it the epoch is finished.
CASES = [
    ("sigterm", "rollout", 2, 1),
    ("sigusr1", "reward", 2, 1),
    ("sigint", "backward", 1, 1),
    ("sigterm", "optimizer", 2, 2),
    ("sigusr1", "checkpoint_write", 3, 3),
    ("sigterm", "rollout", 1, 0),
]


@pytest.mark.parametrize("action,phase,epoch,kept", CASES, ids=[f"{a}-{p}-{e}" for a, p, e, _ in CASES])
def test_a_signal_stops_the_run_with_a_verified_checkpoint_and_resume_auto_equals_an_uninterrupted_run(
        reference, tmp_path, action, phase, epoch, kept):
    out = tmp_path / "run"
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with pytest.raises(Preempted) as caught:
        harness.train(out, fault=f"{action}:phase={phase}:epoch={epoch}", **SPARSE)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"stopped by {action.upper()}")
    assert "verified" in message and "--resume auto" in message
    newest = latest_checkpoint(out / "checkpoints")
    assert newest.name == f"epoch-{kept:06d}" and verify(newest)
    assert str(newest) in message
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # fit put the handlers back
    harness.train(out, resume="auto", **SPARSE)
    assert harness.differences(harness.final_state(out), reference.state()) == []


def test_resume_auto_starts_fresh_in_an_empty_directory_without_a_warning(reference, tmp_path, recwarn):
    harness.train(tmp_path / "run", resume="auto")
    assert [str(w.message) for w in recwarn if "resume" in str(w.message)] == []
    assert harness.differences(harness.final_state(tmp_path / "run"), reference.state()) == []


def test_resume_auto_refuses_a_directory_that_holds_another_run_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    harness.train(out, epochs=1)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(ResumeError, match=r"config key\(s\) differ \(seed: checkpoint 0, now 1\)"):
        harness.train(out, resume="auto", seed=1)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_resume_accepts_auto_and_names_it_for_bad_values():
    assert TrainConfig(resume="auto").validate().resume == "auto"
    with pytest.raises(ValueError, match=r"config key 'resume' has value 'sometimes'; allowed: true, false or 'auto'"):
        TrainConfig(resume="sometimes").validate()


# --- the command line, signalled from outside at a seeded random moment --------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=lambda s: s.name)
def test_the_command_line_stops_on_a_signal_in_one_line_with_exit_75_and_requeues_with_resume_auto(
        reference, tmp_path, signum):
    out = tmp_path / "run"
    flags = []
    for key, value in {**harness.SMALL, "epochs": 12, "checkpoint_every": 5}.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    command = [sys.executable, "-m", "elbo_kernels.cli", "train", "--output_dir", str(out), *flags, "--resume", "auto"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
            time.sleep(0.02)
        time.sleep(random.Random(signum).uniform(0, 0.5))  # a seeded moment within the next epochs
        sent = time.monotonic()
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=120)
        seconds = time.monotonic() - sent
    finally:
        run.kill()
    assert run.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "Traceback" not in stderr and "error:" not in stderr, stderr[-3000:]
    stops = [line for line in stderr.splitlines() if line.startswith("stopped by")]
    assert len(stops) == 1 and stops[0].startswith(f"stopped by {signum.name}"), stderr[-3000:]
    assert seconds < 60, f"{seconds:.1f} s from the signal to the exit"
    print(f"{signum.name}: {seconds:.2f} s from the signal to the exit; {stops[0]}")

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)  # the requeued job
    assert again.returncode == 0, again.stderr[-3000:]
    state, expected = harness.final_state(out), reference.state(12)
    state["history"] = [{k: r.get(k) for k in e} for r, e in zip(state["history"], expected["history"])]
    assert state["epoch"] == 12 and harness.differences(state, expected) == []
