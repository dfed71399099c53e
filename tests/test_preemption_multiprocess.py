"""Preemption with 2 processes (accelerate launch, gloo; issue 24): a signal that reaches one process
stops both at the same point, the checkpoint is whole and verified, each process exits with code
75 and one line is printed; the relaunched job (--resume auto) equals an uninterrupted one bitwise.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elbo_kernels._checksums import verify
from elbo_kernels.train.checkpoint import latest_checkpoint
from elbo_kernels.train.errors import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]
JOB = Path(__file__).with_name("cli_job.py")
TIMEOUT = 300  # seconds; a hang (one process stopping while the other waits in a collective) fails
_spec = importlib.util.spec_from_file_location("reliability_report", ROOT / "scripts" / "reliability_report.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def launch(out: Path, fault: str = "") -> subprocess.CompletedProcess:
    flags = []
    for key, value in {**harness.SMALL, "checkpoint_every": 3}.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(JOB), "--output_dir", str(out), *flags, "--resume", "auto"]
    env = dict(os.environ, OMP_NUM_THREADS="1", ELBO_KERNELS_FAULT=fault, PYTHONPATH=str(ROOT))
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process run did not end within {TIMEOUT} s (fault {fault!r}): a hang")


def test_a_signal_to_one_of_two_processes_stops_both_with_a_verified_checkpoint_and_resume_is_bitwise(tmp_path):
    reference = launch(tmp_path / "reference")
    assert reference.returncode == 0, (reference.stdout + reference.stderr)[-3000:]

    stopped = launch(tmp_path / "run", fault="sigterm:phase=rollout:epoch=2:process=1")
    log = stopped.stdout + stopped.stderr
    assert log.count("exitcode  : 75") + log.count("exitcode: 75") >= 1 or stopped.returncode == EXIT_PREEMPTED, \
        log[-3000:]
    lines = [line for line in log.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1 and lines[0].startswith("stopped by a signal on another process (abandoned epoch 2)"), \
        log[-3000:]
    # No process reports an error or a traceback through our code (the launcher's own report of the
    # non-zero exits is torchrun's).
    assert not [line for line in log.splitlines() if line.startswith("error: ") or "elbo_kernels/" in line], \
        log[-3000:]
    newest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert newest.name == "epoch-000001" and verify(newest)

    resumed = launch(tmp_path / "run")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    state, expected = harness.final_state(tmp_path / "run"), harness.final_state(tmp_path / "reference")
    assert state["epoch"] == 4 and harness.differences(state, expected) == []
