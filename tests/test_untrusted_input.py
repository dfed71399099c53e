"""Nothing we load runs code (issue 24): a hostile reward server and a hostile checkpoint.

A pickle names functions that unpickling calls. The reward server's answers (FlowGRPO's pickle
wire format) are decoded by an unpickler that builds plain data only, and every checkpoint file is
read with ``torch.load(..., weights_only=True)``. The attacks below used to run ``touch MARKER``
inside the trainer; now they are refused with one line and the marker never appears.
"""

import importlib.util
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from elbo_kernels._checksums import COMPLETE, manifest
from elbo_kernels._safe_load import TRUST_ENV, UnsafePickleError, load_checkpoint_file, loads_plain
from elbo_kernels.rewards.remote import RemoteReward, RemoteRewardError
from elbo_kernels.train import errors

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("reward_server.py")
_spec = importlib.util.spec_from_file_location("reliability_report", ROOT / "scripts" / "reliability_report.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


class Touch:
    """Unpickles as ``os.system("touch PATH")``: the marker appearing means the loader ran our code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class Popen:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.path)],))


# --- the restricted unpickler ------------------------------------------------------------------------
PLAIN = {"scores": [0.5, 1, True, None], "rewards": np.arange(4, dtype=np.float32), "tag": "x", "raw": b"\x00\xff",
         "group_rewards": {"count": (np.float64(0.25), np.int64(3), 2 ** 70, 1.5 + 2j)}, "set": {1, 2},
         "object_array": np.array([{"nested": 1}, "s"], dtype=object)}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_through_the_restricted_unpickler_at_every_protocol(protocol):
    loaded = loads_plain(pickle.dumps(PLAIN, protocol=protocol))
    assert loaded.keys() == PLAIN.keys()
    np.testing.assert_array_equal(loaded["rewards"], PLAIN["rewards"])
    assert loaded["rewards"].dtype == np.float32 and loaded["group_rewards"]["count"][1].dtype == np.int64
    assert loaded["scores"] == PLAIN["scores"] and loaded["raw"] == PLAIN["raw"] and loaded["set"] == {1, 2}
    assert loaded["group_rewards"]["count"][2:] == (2 ** 70, 1.5 + 2j)
    assert loaded["object_array"][0] == {"nested": 1}


@pytest.mark.parametrize("payload", [Touch, Popen, lambda p: eval, lambda p: torch.nn.Linear(1, 1)],
                         ids=["os.system", "subprocess.Popen", "builtins.eval", "a torch module"])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_pickle_that_names_any_other_callable_is_refused_in_one_line_and_nothing_runs(tmp_path, payload,
                                                                                      protocol):
    marker = tmp_path / "ran"
    data = pickle.dumps({"scores": [payload(marker)]}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle the answer: it asks to call \S+") as caught:
        loads_plain(data, source="the answer")
    assert "\n" not in str(caught.value) and TRUST_ENV in str(caught.value)
    time.sleep(0.2)
    assert not marker.exists()


def test_the_opt_in_restores_plain_pickle_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "1")
    with pytest.warns(UserWarning, match=f"{TRUST_ENV} is set"):
        assert loads_plain(pickle.dumps({"x": Touch.__name__})) == {"x": "Touch"}


# --- a hostile reward server (a real HTTP server on 127.0.0.1) ------------------------------------------
def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited ({process.returncode}) before writing {path.name}")
        time.sleep(0.1)
    pytest.fail(f"no {path.name} after {seconds} s")


@pytest.fixture
def hostile_server(tmp_path):
    state, marker = tmp_path / "server", tmp_path / "server-code-ran"
    state.mkdir()
    process = subprocess.Popen([sys.executable, str(SERVER), "0", "0", str(state), str(marker)],
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        port = int(wait_for(state / "port", process))
        yield f"http://127.0.0.1:{port}", marker, state
    finally:
        process.kill()
        process.wait(timeout=30)


def test_remote_reward_refuses_a_servers_code_at_once_and_never_runs_it(hostile_server):
    url, marker, state = hostile_server
    reward = RemoteReward(url, max_retries=3, backoff=0.0)
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(RemoteRewardError, match=rf"reward server {url} answered batch 0 with a pickle that is not "
                                                r"plain data; nothing was run: .*asks to call (posix|os)\.system"):
        reward(images, ["a", "b"])
    assert (state / "requests").read_text() == "1"  # refused, not retried
    time.sleep(0.2)
    assert not marker.exists()


def test_the_trainer_stops_on_a_hostile_reward_server_with_one_line_and_the_reward_exit_code(hostile_server,
                                                                                           tmp_path):
    url, marker, _ = hostile_server
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), ELBO_KERNELS_REWARD_URL=url)
    env.pop(TRUST_ENV, None)
    flags = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in harness.SMALL.items()]
    run = subprocess.run([sys.executable, "-m", "elbo_kernels.cli", "train", "--output_dir", str(tmp_path / "run"),
                          "--reward", "remote", *flags], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == errors.EXIT_REWARD, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "not plain data; nothing was run" in lines[0]
    assert not marker.exists()


# --- a hostile checkpoint -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished 2-epoch run with checkpoints epoch-000001 and epoch-000002."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("hostile") / "run"
    harness.train(out, epochs=2)
    torch.set_num_threads(threads)
    return out


def replace_and_remark(checkpoint: Path, name: str, value) -> None:
    """Replace ``name`` in ``checkpoint`` by torch.save(value) and rewrite COMPLETE so that it verifies."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    (checkpoint / name).write_bytes(buffer.getvalue())
    epoch = int(checkpoint.name.split("-")[-1])
    (checkpoint / COMPLETE).write_text(json.dumps(manifest(checkpoint, epoch), indent=1) + "\n")


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_resuming_a_checkpoint_whose_file_runs_code_refuses_in_one_line_and_runs_nothing(two_epochs, tmp_path,
                                                                                       name):
    out = tmp_path / "run"
    shutil.copytree(two_epochs, out)
    marker = tmp_path / "checkpoint-code-ran"
    newest = out / "checkpoints" / "epoch-000002"
    original = torch.load(newest / name, weights_only=True) if name == "optimizer.pt" else {}
    replace_and_remark(newest, name, {**original, "state": {0: {"step": Touch(marker)}}})
    run = harness.run_cli(out, "--resume", "true", "--epochs", "3")
    assert run.returncode == errors.EXIT_RESUME, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"refusing to load {newest / name}" in lines[0] and "nothing in it was run" in lines[0]
    assert "posix.system" in lines[0] or "os.system" in lines[0]
    time.sleep(0.2)
    assert not marker.exists()


def test_a_checkpoint_file_with_a_torch_module_is_refused_too(tmp_path):
    path = tmp_path / "optimizer.pt"
    torch.save({"module": torch.nn.Linear(1, 1)}, path)
    with pytest.raises(UnsafePickleError, match=f"refusing to load {path}"):
        load_checkpoint_file(path)


def test_rng_files_of_older_checkpoints_with_numpy_state_still_load(tmp_path):
    """Checkpoints written before this change hold numpy's tuple state: numpy arrays are admitted."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(state, tmp_path / "rng.pt")
    loaded = load_checkpoint_file(tmp_path / "rng.pt")
    np.testing.assert_array_equal(loaded["numpy"][1], state["numpy"][1])
    assert torch.equal(loaded["torch"], state["torch"]) and loaded["python"] == state["python"]
