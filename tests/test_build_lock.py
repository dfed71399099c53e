"""A C++ build killed mid-compile no longer hangs the next one (issue 24).

torch's builder guards its build directory with a ``lock`` file; a builder killed with SIGKILL
leaves it, and before this change every later process waited on it forever. Now each build holds
a flock on ``builder.lock`` (released by the kernel when its holder dies), so a ``lock`` file found
while holding it is stale: removed with one line, and the build runs again.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from elbo_kernels.ops import _build_cache

ROOT = Path(__file__).resolve().parents[1]
REBUILD_LIMIT = 900  # seconds: a full build here takes 1-3 minutes; waiting on a dead builder never ends


def test_a_stale_torch_lock_is_removed_with_one_line(tmp_path, capsys):
    (tmp_path / _build_cache.TORCH_LOCK).write_text("")
    with _build_cache.exclusive_build(tmp_path):
        assert not (tmp_path / _build_cache.TORCH_LOCK).exists()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"elbo_kernels: removed the stale build lock {tmp_path / 'lock'}")


def test_a_live_builder_is_waited_for_and_named_and_its_lock_file_left_alone(tmp_path, capsys):
    holding, release, order = threading.Event(), threading.Event(), []

    def live_builder():
        with _build_cache.exclusive_build(tmp_path):
            (tmp_path / _build_cache.TORCH_LOCK).write_text("")  # torch's baton, while it compiles
            holding.set()
            release.wait(30)
            (tmp_path / _build_cache.TORCH_LOCK).unlink()
            order.append("first done")

    thread = threading.Thread(target=live_builder)
    thread.start()
    assert holding.wait(30)
    threading.Timer(0.5, release.set).start()
    with _build_cache.exclusive_build(tmp_path):
        order.append("second builds")
    thread.join(30)
    assert order == ["first done", "second builds"]
    err = capsys.readouterr().err
    assert f"waiting for the build in progress in {tmp_path} (pid {os.getpid()} on host" in err
    assert "stale" not in err


def _build(env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "elbo_kernels.ops._cpp"], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL of a process group")
def test_a_build_killed_with_sigkill_mid_compile_is_rebuilt_within_a_time_limit(tmp_path):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), ELBO_KERNELS_BUILD_CUDA="0",
               PYTHONPATH=str(ROOT), MAX_JOBS="1")
    first = _build(env, start_new_session=True)  # its own group: the kill takes ninja and the compiler too
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "ext").glob(f"*/{_build_cache.TORCH_LOCK}")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.05)
        time.sleep(1.0)  # compiling
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    (stale,) = list((tmp_path / "ext").glob(f"*/{_build_cache.TORCH_LOCK}"))  # what the killed build left
    start = time.monotonic()
    second = _build(env)
    try:
        out, err = second.communicate(timeout=REBUILD_LIMIT)
    except subprocess.TimeoutExpired:
        second.kill()
        pytest.fail(f"the build after a killed one did not finish within {REBUILD_LIMIT} s: it waits on {stale}")
    assert second.returncode == 0, err[-3000:]
    assert f"elbo_kernels: removed the stale build lock {stale}" in err and "building again" in err
    assert out.startswith("cpu:") and "C++ CPU kernels built" in out.splitlines()[0], out
    print(f"rebuilt in {time.monotonic() - start:.0f} s after the killed build")
