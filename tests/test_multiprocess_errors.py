"""An error on one of 2 processes (accelerate launch, gloo) ends both within seconds, named (issue 12).

Process 1 fails in epoch 1's update while process 0 goes on into the gradient all-reduce;
before, process 0 waited in that collective (with gloo until the closed connection surfaced as
"Connection closed by peer", with NCCL for its ten-minute watchdog). The launch has a timeout
that fails the test instead of hanging CI.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("multiprocess_failure_job.py")
TIMEOUT = 240  # seconds: start-up of two processes is ~15 s here; a hang is a failure, not a wait

EXPECTED = {
    "value_error": ("ValueError: v has a zero-size latent dimension", 1),
    "out_of_memory": ("OutOfMemoryError: CUDA out of memory", 1),
    "non_finite": ("NonFiniteError: epoch 1: the loss is nan", 6),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.slow
def test_an_error_on_one_process_ends_every_process_with_the_error_named(tmp_path, kind):
    # Port 0: a free rendezvous port, so concurrent launches on one machine never collide on 29500.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(JOB), kind, str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not end within {TIMEOUT} s after process 1 failed ({kind}): a hang")
    log = result.stdout + result.stderr
    named, code = EXPECTED[kind]
    assert result.returncode != 0, log[-3000:]
    # Process 0 names process 1's error, not its own consequence (a closed connection).
    assert f"error: process 1 failed: {named}" in log and "(process 0 stopped with it)" in log, log[-3000:]
    assert f"exitcode  : {code}" in log or f"exitcode: {code}" in log, log[-3000:]
