"""The reliability report's cluster cases (issue 24): preemption signals, one writer per output
directory, a killed C++ build, and loading what others wrote without running their code.

Each trial returns a result row for scripts/reliability_report.py (which passes itself in as ``h``).
WHAT_IT_DOES and SURVIVED are the report's prose for these rows.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from reliability_cases import _error_lines, _row

WHAT_IT_DOES = [
    "- **Preemption** (SIGTERM, SIGINT, SIGUSR1 during training): the run stops at its next stop point -- "
    "abandoning the epoch if its optimizer step has not been taken, finishing it otherwise -- on every "
    "process at once, writes and verifies a checkpoint, prints one line and exits with code 75; the same "
    "command with `--resume auto` continues (a fresh start in an empty directory, a refusal where another "
    "run is). A second signal stops at once (exit 130). See `elbo_kernels/train/preemption.py`.",
    "- **One writer per output directory**: the main process holds an advisory lock (`flock` on "
    "`OUTPUT_DIR/.lock`, recording host, pid, start and command); a second run there stops at once, in one "
    "line naming the holder; a holder that died (even by SIGKILL) never blocks, and the run taking over "
    "says so.",
    "- **A killed C++ build**: torch's `lock` file left in the build directory by a builder killed "
    "mid-compile used to make every later process wait forever; a builder now holds a flock on "
    "`builder.lock`, so a `lock` file found while holding it is stale: removed, one line, rebuilt.",
    "- **Nothing loaded runs code**: every checkpoint file is read with `torch.load(weights_only=True)` "
    "(safetensors for weights), and FlowGRPO's pickle reward responses go through an unpickler that builds "
    "plain data only; anything else is refused in one line (`ELBO_KERNELS_TRUST_PICKLES=1` is the one, "
    "explicit opt-in).",
]
SURVIVED = [
    "- **survived** (signal): the run stopped with one line, exit code 75 (command line) or `Preempted` "
    "(in-process), leaving a checkpoint whose hashes verify at the expected epoch; `--resume auto` then "
    "finished a run bitwise equal to the uninterrupted one.",
    "- **survived** (torchrun --max-restarts): the killed process's group was restarted by torchrun and "
    "resumed from the newest verified checkpoint; the finished run equals an uninterrupted torchrun run bitwise.",
    "- **survived** (one writer): the second run was refused in one line naming the holder's pid and host "
    "and wrote nothing; once the holder was killed with SIGKILL, a run took the directory over.",
    "- **survived** (killed build): the build after one killed with SIGKILL mid-compile removed the stale "
    "lock in one line and finished within the time limit.",
    "- **survived** (untrusted input): the hostile file or answer was refused in one line and its command "
    "(`touch MARKER`) did not run.",
]


def _flags(h, **overrides) -> list:
    flags = []
    for key, value in {**h.SMALL, **overrides}.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


# --- preemption ---------------------------------------------------------------------------------------
def signal_trial(h, root: Path, reference, action: str, phase: str, epoch: int) -> dict:
    """In-process: a real signal (os.kill) at ``phase`` of ``epoch``, checkpoints every 3 epochs."""
    from elbo_kernels._checksums import verify
    from elbo_kernels.train.checkpoint import latest_checkpoint
    from elbo_kernels.train.errors import Preempted

    out, fault = root / f"signal-{action}-{phase}-{epoch}", f"{action}:phase={phase}:epoch={epoch}"
    message = ""
    try:
        h.train(out, fault=fault, checkpoint_every=3)
    except Preempted as stop:
        message = str(stop)
    newest = latest_checkpoint(out / "checkpoints")
    kept = int(newest.name.split("-")[1]) if newest else None
    stopped = bool(message) and "\n" not in message and newest is not None and verify(newest)
    h.train(out, resume="auto", checkpoint_every=3)
    lost = h.differences(h.final_state(out), reference.state())
    return _row("signal", fault, "in-process", exit=75 if message else 0, resumed_from=kept,
                redone=epoch - kept if kept is not None and kept < epoch else 0, lost=lost,
                survived=stopped and not lost, detail=message[:200], epochs=str(epoch))


def cli_signal_trial(h, root: Path, reference, signum: int, epochs: int = 12) -> dict:
    """The command line signalled from outside at a seeded random moment, then requeued with --resume auto."""
    out = root / f"signal-cli-{signal.Signals(signum).name}"
    command = [sys.executable, "-m", "elbo_kernels.cli", "train", "--output_dir", str(out),
               *_flags(h, epochs=epochs, checkpoint_every=5), "--resume", "auto"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(h.ROOT))
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=h.ROOT)
    try:
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            if run.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(random.Random(signum).uniform(0, 0.5))
        sent = time.monotonic()
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=300)
        seconds = time.monotonic() - sent
    finally:
        run.kill()
    lines = [line for line in stderr.splitlines() if line.startswith("stopped by")]
    stopped = run.returncode == 75 and len(lines) == 1 and "Traceback" not in stderr and "error:" not in stderr
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=h.ROOT)
    lost = ["the requeued run failed"] if again.returncode else []
    if not lost:
        state, expected = h.final_state(out), reference.state(epochs)
        state["history"] = [{k: r.get(k) for k in e} for r, e in zip(state["history"], expected["history"])]
        lost = h.differences(state, expected)
    return _row("signal", f"{signal.Signals(signum).name} from outside, seeded moment", "command line",
                exit=run.returncode, lost=lost, survived=stopped and not lost, epochs="-",
                detail=f"{seconds:.1f} s signal to exit; " + (lines[0][:160] if lines else stderr[-200:]))


def multiprocess_signal_trial(h, root: Path) -> dict:
    """2 processes (accelerate launch, gloo): SIGTERM to process 1 only; both stop; resume is bitwise."""
    from elbo_kernels._checksums import verify
    from elbo_kernels.train.checkpoint import latest_checkpoint

    def launch(out: Path, fault: str = ""):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend",
                   "no", str(h.ROOT / "tests" / "cli_job.py"), "--output_dir", str(out),
                   *_flags(h, checkpoint_every=3), "--resume", "auto"]
        env = dict(os.environ, OMP_NUM_THREADS="1", ELBO_KERNELS_FAULT=fault, PYTHONPATH=str(h.ROOT))
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=h.ROOT)
            return result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired:
            return None, "timed out after 300 s (a hang)"

    fault = "sigterm:phase=rollout:epoch=2:process=1"
    code, log = launch(root / "signal-2p-reference")
    stopped_code, stopped_log = launch(root / "signal-2p", fault)
    newest = latest_checkpoint(root / "signal-2p" / "checkpoints")
    lines = [line for line in stopped_log.splitlines() if line.startswith("stopped by")]
    stopped = (stopped_code is not None and "exitcode  : 75" in stopped_log and len(lines) == 1
               and newest is not None and newest.name == "epoch-000001" and verify(newest))
    resumed_code, resumed_log = launch(root / "signal-2p")
    lost = ["a launch failed"] if code != 0 or resumed_code != 0 else h.differences(
        h.final_state(root / "signal-2p"), h.final_state(root / "signal-2p-reference"))
    return _row("signal", f"{fault} (2 processes)", "accelerate launch", exit=stopped_code, resumed_from=1, redone=1,
                lost=lost, survived=stopped and not lost, epochs="2",
                detail=(lines[0][:200] if lines else stopped_log[-300:]))


def elastic_trial(h, root: Path) -> dict:
    """torchrun --max-restarts 1, 2 gloo processes: process 1 SIGKILLed after epoch 3's step; the restart resumes."""
    def torchrun(out: Path, fault: str = ""):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "--max-restarts", "1", "--monitor-interval", "0.5", str(h.ROOT / "tests" / "cli_job.py"),
                   "--output_dir", str(out), *_flags(h), "--resume", "auto"]
        env = dict(os.environ, OMP_NUM_THREADS="1", ELBO_KERNELS_FAULT=fault, PYTHONPATH=str(h.ROOT))
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=h.ROOT)
            return result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired:
            return None, "timed out after 300 s (the restarted group hangs)"

    fault = "kill:phase=optimizer:epoch=3:process=1"
    code, _ = torchrun(root / "elastic-reference")
    run_code, log = torchrun(root / "elastic", fault)
    died = "failed (exitcode: -9) local_rank: 1" in log
    lost = ["a launch failed"] if code != 0 or run_code != 0 else h.differences(
        h.final_state(root / "elastic"), h.final_state(root / "elastic-reference"))
    return _row("signal", f"{fault} (torchrun --max-restarts 1)", "torchrun, 2 processes", exit=run_code,
                resumed_from=2, redone=1, lost=lost, survived=died and not lost, epochs="3",
                detail="process 1 died by SIGKILL; the restarted group resumed" if died and not lost else log[-300:])


# --- one writer per output directory ------------------------------------------------------------------
HOLD = ("import sys, time; from pathlib import Path; from elbo_kernels.train.lock import RunLock; "
        "RunLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)")


def lock_trial(h, root: Path) -> dict:
    out = root / "locked"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(h.ROOT)))
    try:
        holder.stdout.readline()
        second = h.run_cli(out, "--resume")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    lines = _error_lines(second.stderr)
    refused = (second.returncode == 2 and len(lines) == 1 and f"in use by pid {holder.pid}" in lines[0]
               and sorted(p.name for p in out.iterdir()) == [".lock"])
    after = h.run_cli(out, "--epochs", "1")  # the holder died by SIGKILL: not a blocker
    ok = refused and after.returncode == 0 and "ended without releasing" in after.stderr
    return _row("one writer", "a second run on a directory in use, then its holder killed", "command line",
                exit=second.returncode, survived=ok, lost=[] if ok else ["not refused, or blocked by a dead holder"],
                detail=(lines or [second.stderr[-200:]])[0][:240])


# --- a C++ build killed mid-compile -------------------------------------------------------------------
def killed_build_trial(h, root: Path, limit: float = 900) -> dict:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(root / "ext"), ELBO_KERNELS_BUILD_CUDA="0",
               PYTHONPATH=str(h.ROOT), MAX_JOBS="1")
    build = [sys.executable, "-m", "elbo_kernels.ops._cpp"]
    first = subprocess.Popen(build, env=env, cwd=h.ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while not list((root / "ext").glob("*/lock")) and first.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    left = bool(list((root / "ext").glob("*/lock")))
    start = time.monotonic()
    try:
        second = subprocess.run(build, env=env, cwd=h.ROOT, capture_output=True, text=True, timeout=limit)
        ok = second.returncode == 0 and "removed the stale build lock" in second.stderr and left
        detail = f"rebuilt in {time.monotonic() - start:.0f} s; " + next(
            (line for line in second.stderr.splitlines() if "stale" in line), "")[:160]
    except subprocess.TimeoutExpired:
        ok, detail = False, f"no build within {limit:.0f} s (waiting on the dead builder's lock)"
    return _row("killed build", "C++ build killed with SIGKILL mid-compile, then built again", "python -m "
                "elbo_kernels.ops._cpp", exit=-9, survived=ok, lost=[] if ok else ["hung or not rebuilt"],
                detail=detail)


# --- untrusted input ----------------------------------------------------------------------------------
class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def hostile_checkpoint_trial(h, root: Path) -> dict:
    import torch

    from elbo_kernels._checksums import COMPLETE, manifest

    out, marker = root / "hostile-checkpoint", root / "hostile-checkpoint-ran"
    h.train(out, epochs=2)
    newest = out / "checkpoints" / "epoch-000002"
    buffer = io.BytesIO()
    torch.save({"state": {0: {"step": _Touch(marker)}}, "param_groups": []}, buffer)
    (newest / "optimizer.pt").write_bytes(buffer.getvalue())
    (newest / COMPLETE).write_text(json.dumps(manifest(newest, 2), indent=1) + "\n")
    result = h.run_cli(out, "--resume", "--epochs", "3")
    lines = _error_lines(result.stderr)
    ok = result.returncode == 3 and len(lines) == 1 and "refusing to load" in lines[0] and not marker.exists()
    return _row("untrusted input", "optimizer.pt replaced by a pickle that runs a command, marker rewritten",
                "command line", exit=result.returncode, survived=ok,
                lost=[] if ok else ["the command ran, or not one line"], detail=(lines or [""])[0][:240])


def hostile_server_trial(h, root: Path) -> dict:
    import torch

    from elbo_kernels.rewards.remote import RemoteReward, RemoteRewardError

    state, marker = root / "hostile-server", root / "hostile-server-ran"
    state.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, str(h.ROOT / "tests" / "reward_server.py"), "0", "0", str(state),
                               str(marker)], env=dict(os.environ, OMP_NUM_THREADS="1"))
    message = ""
    try:
        while not ((state / "port").is_file() and (state / "port").read_text()):
            time.sleep(0.1)
        try:
            RemoteReward(f"http://127.0.0.1:{(state / 'port').read_text()}", max_retries=2, backoff=0.0)(
                torch.rand(2, 1, 8, 8), ["a", "b"])
        except RemoteRewardError as error:
            message = str(error)
    finally:
        server.kill()
        server.wait(timeout=30)
    time.sleep(0.2)
    ok = "not plain data; nothing was run" in message and not marker.exists()
    return _row("untrusted input", "a reward server answering with a pickle that runs a command",
                "HTTP on 127.0.0.1", exit=None, survived=ok, lost=[] if ok else ["the command ran"],
                detail=message[:240])


def cluster_suite(h, root: Path, reference, quick: bool, note: Callable[[str], None]) -> list:
    cases = [("sigterm", "rollout", 2), ("sigusr1", "reward", 2), ("sigint", "backward", 1),
             ("sigterm", "optimizer", 2), ("sigusr1", "checkpoint_write", 3)]
    results = [signal_trial(h, root, reference, *case) for case in (cases[:1] if quick else cases)]
    for signum in (signal.SIGTERM,) if quick else (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        results.append(cli_signal_trial(h, root, reference, signum))
    if not quick:
        results += [multiprocess_signal_trial(h, root), elastic_trial(h, root)]
    results.append(lock_trial(h, root))
    results += [hostile_checkpoint_trial(h, root), hostile_server_trial(h, root)]
    if quick:
        note("the killed C++ build (minutes of compiling): in the full report and tests/test_build_lock.py")
    else:
        results.append(killed_build_trial(h, root))
    return results
