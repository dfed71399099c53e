"""One writer per output directory (issue 24): a second run on a directory in use refuses at once, in one
line naming the holder, and the first continues unharmed; a holder that died does not block.

Before, two runs started with --resume on one directory both wrote checkpoints and metrics into it.
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from elbo_kernels.train.errors import EXIT_USAGE, OutputDirError
from elbo_kernels.train.lock import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reliability_report", ROOT / "scripts" / "reliability_report.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

HOLD = "import sys, time; from pathlib import Path; from elbo_kernels.train.lock import RunLock; " \
       "RunLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run's lock (as a run's main process does)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait(timeout=30)


def test_a_run_on_a_directory_held_by_another_process_refuses_naming_the_holder_and_writes_nothing(holder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(OutputDirError) as caught:
        harness.train(out, resume=True)
    message = str(caught.value)
    assert f"output_dir {out} is in use by pid {holder.pid} on host {socket.gethostname()}" in message
    assert "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


def test_a_holder_killed_with_sigkill_does_not_block_and_is_named_when_taken_over(holder, tmp_path, recwarn):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    harness.train(tmp_path / "run", epochs=1)
    taken = [str(w.message) for w in recwarn if "ended without releasing" in str(w.message)]
    assert len(taken) == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in taken[0]


def test_the_lock_is_released_when_fit_ends(tmp_path, recwarn):
    out = tmp_path / "run"
    harness.train(out, epochs=1)
    assert (out / LOCK_FILE).read_text() == ""  # released cleanly: nothing stale for the next run
    harness.train(out, epochs=2, resume=True)
    assert not [w for w in recwarn if "ended without releasing" in str(w.message)]


def test_a_second_command_on_a_running_directory_exits_at_once_and_the_first_is_unharmed(tmp_path):
    out = tmp_path / "run"
    flags = []
    for key, value in {**harness.SMALL, "epochs": 10}.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    command = [sys.executable, "-m", "elbo_kernels.cli", "train", "--output_dir", str(out), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # The first run stops (holding the lock) just before its third epoch's reward, until SIGCONT.
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(harness.metric_epochs(out) if (out / "metrics.jsonl").is_file() else []) < 2:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # held mid-run: the second command must not wait for it
        started = time.monotonic()
        second = subprocess.run(command + ["--resume", "true"], env=env, capture_output=True, text=True, timeout=300)
        first.send_signal(signal.SIGCONT)
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert second.returncode == EXIT_USAGE, second.stderr[-3000:]
    lines = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in second.stderr
    assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in lines[0]
    print(f"the second command ended {time.monotonic() - started:.1f} s after it started")
    assert first.returncode == 0, stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        harness.train(tmp_path / "reference", epochs=10)
    finally:
        torch.set_num_threads(threads)
    state, expected = harness.final_state(out), harness.final_state(tmp_path / "reference")
    state["history"] = [{k: r.get(k) for k in e} for r, e in zip(state["history"], expected["history"])]
    assert harness.differences(state, expected) == []
