"""The reliability report's operational cases (issue 12): corrupt checkpoints, full and read-only
disks, a re-run into a used output directory, an error on one of two processes (and, through
reliability_cluster.py, the cluster cases of issue 24).

Each trial returns a result row for scripts/reliability_report.py (which passes itself in as
``h``: these functions use its training helpers and its uninterrupted reference runs). The disk
cases run the real command line on a real tmpfs in a user namespace (``unshare -rm``); where
that is not allowed they are reported as not run, never as survived.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

ADAPTER = "adapters/default/adapter_model.safetensors"


def _row(kind, fault, via, *, exit=0, resumed_from=None, redone=0, lost=(), survived=False, detail="",
         epochs="-") -> dict:
    return dict(kind=kind, fault=fault, via=via, exit=exit, resumed_from=resumed_from, left_behind=[],
                redone=redone, lost=list(lost), survived=survived, detail=detail, epochs=epochs)


# --- corruption that keeps every file's size ------------------------------------------------------------
def overwrite_4k(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2 - 2048)
        f.write(np.random.default_rng(0).bytes(4096))


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def flip_mantissa_bits(path: Path, count: int = 1024) -> None:
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    values = np.frombuffer(data, dtype=np.float32, offset=header, count=(len(data) - header) // 4).copy()
    chosen = np.random.default_rng(2).choice(values.size, size=min(count, values.size), replace=False)
    values.view(np.uint32)[chosen] ^= 1  # the lowest mantissa bit: every value stays finite
    data[header:header + values.nbytes] = values.tobytes()
    path.write_bytes(bytes(data))


CORRUPTIONS: Dict[str, tuple] = {
    "4 KB overwritten in optimizer.pt": ("optimizer.pt", overwrite_4k),
    "random bytes in the default adapter": (ADAPTER, random_bytes),
    "1,024 mantissa bits flipped in the default adapter": (ADAPTER, flip_mantissa_bits),
}


def corruption_trial(h, root: Path, reference, label: str, epoch: int = 3) -> dict:
    """Corrupt checkpoint ``epoch`` (the newest), resume: it must be set aside and the run equal the reference."""
    from elbo_kernels.train.state import CheckpointWarning

    name, corrupt = CORRUPTIONS[label]
    out = root / f"corrupt-{name.replace('/', '_')}-{corrupt.__name__}"
    h.train(out, epochs=epoch)
    corrupt(out / "checkpoints" / f"epoch-{epoch:06d}" / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h.train(out, resume=True)
    named = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    lost = h.differences(h.final_state(out), reference.state())
    warned = any(f"epoch-{epoch:06d} fails verification: {name} has changed" in m for m in named)
    aside = (out / "checkpoints" / f"corrupt-epoch-{epoch:06d}").is_dir()
    return _row("corrupt checkpoint", label, "in-process", resumed_from=epoch - 1, redone=1, epochs=str(epoch),
                lost=lost + ([] if warned else ["no warning naming the checkpoint"]),
                survived=warned and aside and not lost, detail=named[0][:200] if named else "")


def all_corrupt_trial(h, root: Path, epoch: int = 3) -> dict:
    from elbo_kernels.train.errors import ResumeError

    out = root / "corrupt-all"
    h.train(out, epochs=epoch)
    for path in (out / "checkpoints").glob("epoch-*"):
        overwrite_4k(path / "optimizer.pt")
    records = (out / "metrics.jsonl").read_text()
    message = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            h.train(out, resume=True)
        except ResumeError as error:
            message = str(error)
    ok = (f"no checkpoint under {out / 'checkpoints'} verifies" in message and "\n" not in message
          and (out / "metrics.jsonl").read_text() == records)
    return _row("corrupt checkpoint", "every checkpoint's optimizer.pt overwritten", "in-process",
                exit=None, epochs=f"{epoch - 1},{epoch}", survived=ok, detail=message[:200],
                lost=[] if ok else ["a corrupt checkpoint was loaded, or the message is wrong"])


# --- disks ------------------------------------------------------------------------------------------------
def tmpfs_unavailable() -> Optional[str]:
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else probe.stderr.strip() or "mount failed"


def _cli_in_tmpfs(h, mount: Path, size: str, script: str) -> subprocess.CompletedProcess:
    mount.mkdir(parents=True, exist_ok=True)
    flags = []
    for key, value in h.SMALL.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    train = " ".join([sys.executable, "-m", "elbo_kernels.cli", "train", *flags])
    env = dict(os.environ, MNT=str(mount), TRAIN=train, PYTHONPATH=str(h.ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs $MNT && {script}"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=h.ROOT)


def _error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def disk_full_trial(h, root: Path, reference) -> dict:
    """The disk fills at checkpoint 2; the run stops with one line; once space is free, --resume is exact."""
    saved = root / "disk-full"
    result = _cli_in_tmpfs(h, root / "mnt-full", "700k",
                           f"$TRAIN --output_dir $MNT/run; echo exit=$?; cp -a $MNT/run {saved}")
    lines = _error_lines(result.stderr)
    stopped = ("exit=4" in result.stdout and len(lines) == 1 and "Traceback" not in result.stderr
               and "no space left on device" in lines[0] and "free on that filesystem" in lines[0])
    resumed = h.run_cli(saved, "--resume")  # the same run, moved where there is space
    lost = ["the resumed run failed"] if resumed.returncode else []
    if not lost:
        state, expected = h.final_state(saved), reference.state()
        state["history"] = [{k: r.get(k) for k in e} for r, e in zip(state["history"], expected["history"])]
        lost = h.differences(state, expected)
    return _row("disk", "disk full at the second checkpoint", "command line (tmpfs)", exit=4, resumed_from=1,
                redone=1, epochs="2",
                lost=lost, survived=stopped and not lost, detail=(lines or [result.stderr[-300:]])[0][:240])


def read_only_trial(h, root: Path) -> dict:
    result = _cli_in_tmpfs(h, root / "mnt-ro", "1m", "mount -o remount,ro $MNT && $TRAIN --output_dir $MNT/run; "
                                                     "echo exit=$?")
    lines = _error_lines(result.stderr)
    ok = ("exit=4" in result.stdout and len(lines) == 1 and "Traceback" not in result.stderr
          and "Read-only file system" in lines[0] and "/run" in lines[0])
    return _row("disk", "read-only output directory", "command line (tmpfs)", exit=4, survived=ok,
                lost=[] if ok else ["not one line naming the path"], detail=(lines or [result.stderr[-300:]])[0][:240])


# --- a re-run into a used output directory ------------------------------------------------------------------
def used_directory_trial(h, root: Path) -> dict:
    out = root / "used"
    h.run_cli(out)  # a finished run
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = h.run_cli(out, "--epochs", "2")
    lines = _error_lines(again.stderr)
    refused = again.returncode == 2 and len(lines) == 1 and "holds another run" in lines[0]
    intact = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    overwritten = h.run_cli(out, "--epochs", "2", "--overwrite")
    loads = False
    if overwritten.returncode == 0:
        from elbo_kernels.models import digits

        summary = json.loads((out / "summary.json").read_text())
        digits.load_pipeline(adapter=out)
        loads = Path(summary["final_checkpoint"]).name == "epoch-000002"
    ok = refused and intact and loads
    lost = [] if ok else [x for x, bad in (("not refused", not refused), ("old run changed", not intact),
                                          ("--overwrite run unusable", not loads)) if bad]
    return _row("output directory", "re-run into a finished run's directory", "command line", exit=again.returncode,
                survived=ok, lost=lost, detail=(lines or [""])[0][:240])


# --- an error on one of two processes ---------------------------------------------------------------------
def rank_failure_trial(h, root: Path, kind: str) -> dict:
    named = {"value_error": "ValueError: v has a zero-size latent dimension",
             "out_of_memory": "OutOfMemoryError", "non_finite": "NonFiniteError"}[kind]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(h.ROOT / "tests" / "multiprocess_failure_job.py"), kind, str(root / f"rank-{kind}")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(h.ROOT))
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=h.ROOT)
        code, log = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
        code, log = None, "timed out after 300 s (a hang)"
    ok = code not in (0, None) and f"error: process 1 failed: {named}" in log and "(process 0 stopped" in log
    return _row("2 processes", f"{kind.replace('_', ' ')} on process 1", "accelerate launch", exit=code, survived=ok,
                lost=[] if ok else ["not ended on every process with the error named"],
                detail="process 0 stopped, naming process 1's error" if ok else log[-300:])


def operational_suite(h, root: Path, reference, quick: bool, note: Callable[[str], None]) -> list:
    results = [corruption_trial(h, root, reference, label) for label in CORRUPTIONS]
    results.append(all_corrupt_trial(h, root))
    why = tmpfs_unavailable()
    if why:
        note(f"disk full / read-only: not run here ({why})")
    else:
        results += [disk_full_trial(h, root, reference), read_only_trial(h, root)]
    results.append(used_directory_trial(h, root))
    for kind in ("value_error",) if quick else ("value_error", "out_of_memory", "non_finite"):
        results.append(rank_failure_trial(h, root, kind))
    import reliability_cluster  # preemption, one writer, a killed build, untrusted input (issue 24)

    return results + reliability_cluster.cluster_suite(h, root, reference, quick, note)
