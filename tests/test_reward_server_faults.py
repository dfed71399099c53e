"""A real reward server killed mid-run: retries, then a clear RewardError; --resume once it is back
equals an uninterrupted run (issue 12).

The server (tests/reward_server.py) is a separate process on 127.0.0.1 scoring with the digits
reward judge. It first scores an uninterrupted reference run (in this process, 4 requests), then
holds the command-line run's epoch-3 request unanswered until this test kills it (SIGKILL), so
the kill lands mid-request at the same point every time.
"""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elbo_kernels.rewards import RemoteReward
from elbo_kernels.train import errors

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("reward_server.py")
_spec = importlib.util.spec_from_file_location("reliability_report", ROOT / "scripts" / "reliability_report.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

FLAGS = ["--reward", "remote", "--epochs", "4", "--prompts_per_epoch", "4", "--group_size", "2",
         "--draws_per_sample", "2", "--eval_every", "0", "--eval_seeds", "1", "--checkpoint_every", "1",
         "--plots", "false", "--tensorboard", "false", "--progress", "false", "--backend", "torch", "--lr", "0.01"]


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited ({process.returncode}) before writing {path.name}")
        time.sleep(0.1)
    pytest.fail(f"no {path.name} after {seconds} s")


class Server:
    def __init__(self, state: Path, port: int = 0, hold_at: int = 0):
        state.mkdir(parents=True, exist_ok=True)
        for name in ("port", "holding"):
            (state / name).unlink(missing_ok=True)
        self.state = state
        self.process = subprocess.Popen([sys.executable, str(SERVER), str(port), str(hold_at), str(state)],
                                        env=dict(os.environ, OMP_NUM_THREADS="1"))
        self.port = int(wait_for(state / "port", self.process))
        self.url = f"http://127.0.0.1:{self.port}"

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=30)


def train(out: Path, url: str, *flags: str, wait: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ELBO_KERNELS_REWARD_URL=url,
               ELBO_KERNELS_REWARD_RETRIES="2", ELBO_KERNELS_REWARD_BACKOFF="0.2", ELBO_KERNELS_REWARD_TIMEOUT="30")
    command = [sys.executable, "-m", "elbo_kernels.cli", "train", "--output_dir", str(out), *FLAGS, *flags]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        process.communicate(timeout=300)
    return process


@pytest.mark.slow
def test_a_killed_reward_server_stops_the_run_clearly_and_resume_equals_an_uninterrupted_run(tmp_path):
    server = Server(tmp_path / "server", hold_at=4 + 3)  # after the reference's 4, the run's epoch 3
    try:
        harness.train(tmp_path / "reference", reward_fn=RemoteReward(server.url, name="remote"))
    except BaseException:
        server.kill()
        raise
    run = train(tmp_path / "run", server.url, wait=False)
    try:
        wait_for(server.state / "holding", server.process)
        server.kill()  # mid-request: the trainer sees the connection drop, then refusals
        _, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == errors.EXIT_REWARD, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "the reward function failed on 8 images of epoch 3" in lines[0]
    assert f"reward server {server.url} failed batch 0 (8 images) 3 times" in lines[0]  # 1 try + 2 retries

    back = Server(tmp_path / "server", port=server.port)  # the same URL again
    try:
        resumed = train(tmp_path / "run", back.url, "--resume")
    finally:
        back.kill()
    assert resumed.returncode == 0, resumed.stderr.read()[-3000:] if resumed.stderr else ""
    state, expected = harness.final_state(tmp_path / "run"), harness.final_state(tmp_path / "reference")
    # The command line also evaluates: compare the training keys of each record.
    state["history"] = [{k: r.get(k) for k in e} for r, e in zip(state["history"], expected["history"])]
    assert state["epoch"] == 4 and harness.differences(state, expected) == []
