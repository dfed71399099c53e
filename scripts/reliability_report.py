"""Run the trainer's fault-injection suite and write docs/reliability.md.

    python scripts/reliability_report.py            # the full suite (a few minutes on 2 cores)
    python scripts/reliability_report.py --quick    # one trial per fault (CI; tests/test_reliability.py
                                                    # runs the same harness)

Every trial trains the embedded DigitEval model on a tiny configuration (4 prompts x 2
samples, K = 2 draws, checkpoint every epoch, CPU, backend "torch", one thread) and compares
what survived with an uninterrupted run of the same seed:

- kill -9 (SIGKILL, no cleanup) at a phase of an epoch, in a forked training process; then
  resume from the last complete checkpoint. Survived = the kill happened, the checkpoint
  resumed from is complete (a half-written one is never loaded), and the resumed run's final
  parameters, old / EMA adapters, optimizer state and metrics records are BITWISE those of
  the uninterrupted run. One trial per fault also goes through the real command line
  (``elbo-kernels train`` killed, then ``--resume``).
- NaN injected into a value of an epoch (rollout velocity, model output, reward, loss,
  gradient). Survived = the epoch is logged as skipped with the right reason and the trained
  state (parameters, old / EMA, optimizer) equals that of a run that stopped just before.
- the reward function raising / returning garbage. Survived = the run stops with a clear
  error, without an update from that rollout, and resuming with a working reward gives the
  uninterrupted run bitwise (no rollout dropped, none trained on twice).
- the operational cases of scripts/reliability_cases.py: checkpoints corrupted in ways that
  keep every file's size, a full and a read-only disk, a re-run into a finished run's output
  directory, and an error on one of two processes.

"Lost" counts anything that differs from the reference (the goal: nothing). Epochs redone
after a resume are recomputation, not loss, and are reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from elbo_kernels._safe_load import load_checkpoint_file  # noqa: E402
from elbo_kernels.train import TrainConfig, Trainer  # noqa: E402
from elbo_kernels.train import faults  # noqa: E402
from elbo_kernels.train.checkpoint import is_complete, latest_checkpoint  # noqa: E402
from elbo_kernels.train.task import Task  # noqa: E402

EPOCHS = 4
SMALL = dict(epochs=EPOCHS, prompts_per_epoch=4, group_size=2, draws_per_sample=2, eval_every=0, eval_seeds=1,
             checkpoint_every=1, keep_checkpoints=2, plots=False, tensorboard=False, progress=False,
             backend="torch", lr=0.01)
KILL_PHASES = ("rollout", "reward", "backward", "optimizer", "checkpoint_write", "checkpoint_rename",
               "checkpoint_prune")
NAN_PHASES = ("rollout_velocity", "velocity", "reward", "loss", "grad")
NAN_REASON = {"rollout_velocity": "rollout", "velocity": "model_output", "reward": "reward", "loss": "loss",
              "grad": "gradients"}


# --- running the trainer ---------------------------------------------------------------------------
def config(out: Path, **overrides) -> TrainConfig:
    return TrainConfig(output_dir=str(out), **{**SMALL, **overrides})


def digits_task(reward_fn=None) -> Task:
    """The DigitEval task without its evaluation (the trained state does not depend on it)."""
    from elbo_kernels.models import digits

    return Task(model=digits.DigitsModel.load(), prompts=[digits.prompt(d) for d in range(10)],
                reward_fn=reward_fn or digits.reward_fn, evaluate=None)


def train(out: Path, *, fault: str = "", reward_fn=None, **overrides) -> dict:
    """One in-process run (``fault`` installed for its duration); returns the summary."""
    with faults.inject(fault):
        return Trainer(config(out, **overrides), digits_task(reward_fn)).fit()


def train_in_child(out: Path, *, fault: str = "", **overrides) -> int:
    """Train in a forked process (no import cost); its exit code, -9 when a kill fault fired."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        code = 1
        try:
            torch.set_num_threads(1)
            train(out, fault=fault, **overrides)
            code = 0
        except BaseException:  # noqa: BLE001 - report and exit with a failure code
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_cli(out: Path, *args: str, fault: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m elbo_kernels.cli train`` on the small configuration (with evaluation, as users run it)."""
    flags = []
    for key, value in SMALL.items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", ELBO_KERNELS_FAULT=fault, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "elbo_kernels.cli", "train", "--output_dir", str(out), *flags, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# --- what a run leaves behind ------------------------------------------------------------------------
def final_state(out: Path, epoch: Optional[int] = None) -> Dict[str, object]:
    """Everything a checkpoint holds that training computed: adapters, optimizer, step, history."""
    from safetensors.torch import load_file

    root = out / "checkpoints"
    path = latest_checkpoint(root) if epoch is None else root / f"epoch-{epoch:06d}"
    state: Dict[str, object] = {}
    for file in sorted(path.rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            state[f"{file.relative_to(path)}:{key}"] = value
    optimizer = load_checkpoint_file(path / "optimizer.pt")
    for index, values in optimizer["state"].items():
        for key, value in values.items():
            state[f"optimizer:{index}:{key}"] = value
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    state["step"] = trainer_state["step"]
    state["epoch"] = trainer_state["epoch"]
    state["history"] = [_untimed(r) for r in trainer_state["history"]]
    return state


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("seconds")}


def differences(a: Dict[str, object], b: Dict[str, object], ignore=()) -> List[str]:
    """Keys whose values are not bitwise equal (tensors with torch.equal, the rest with ==)."""
    found = [f"only in one: {k}" for k in sorted(set(a) ^ set(b)) if k not in ignore]
    for key in sorted(set(a) & set(b)):
        if key in ignore:
            continue
        x, y = a[key], b[key]
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) else _json_equal(x, y)
        if not same:
            found.append(key)
    return found


def _json_equal(x, y) -> bool:
    return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)  # NaN == NaN here


def metric_epochs(out: Path) -> List[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines() if line]


# --- trials ---------------------------------------------------------------------------------------
class Reference:
    """Uninterrupted runs, computed once: the full run, and each shorter prefix of it."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: Dict[int, Dict[str, object]] = {}

    def state(self, epochs: int = EPOCHS) -> Dict[str, object]:
        if epochs not in self._cache:
            out = self.root / f"reference-{epochs}"
            if epochs == 0:  # the initial state, written as a checkpoint "epoch-000000"
                from elbo_kernels.train.state import save_state

                save_state(Trainer(config(out), digits_task()), {})
            else:
                train(out, epochs=epochs)
            self._cache[epochs] = final_state(out)
        return self._cache[epochs]


def expected_resume_epoch(phase: str, epoch: int) -> int:
    """The last complete checkpoint after a kill at ``phase`` of ``epoch`` (checkpoint_every = 1)."""
    return epoch if phase == "checkpoint_prune" else epoch - 1


def kill_trial(root: Path, reference: Reference, phase: str, epoch: int, via_cli: bool = False) -> dict:
    out = root / f"kill-{phase}-{epoch}{'-cli' if via_cli else ''}"
    fault = f"kill:phase={phase}:epoch={epoch}"
    if via_cli:
        killed = run_cli(out, fault=fault).returncode
    else:
        killed = train_in_child(out, fault=fault)
    latest = latest_checkpoint(out / "checkpoints")
    resumed_from = int(latest.name.split("-")[1]) if latest else 0
    half_written = [p.name for p in (out / "checkpoints").iterdir()] if (out / "checkpoints").is_dir() else []
    half_written = [n for n in half_written if not n.startswith("epoch-") or not is_complete(out / "checkpoints" / n)]
    if via_cli:
        result = run_cli(out, "--resume")
        resumed_ok = result.returncode == 0
        detail = "" if resumed_ok else result.stderr[-2000:]
    else:
        try:
            train(out, resume=True)
            resumed_ok, detail = True, ""
        except Exception as error:  # noqa: BLE001 - a trial that fails is reported, not fatal
            resumed_ok, detail = False, f"{type(error).__name__}: {error}"
    expected = reference.state()
    state = final_state(out) if resumed_ok else {}
    if via_cli and resumed_ok:  # the command line also evaluates: compare the training keys of each record
        state["history"] = [{k: r.get(k) for k in e} for r, e in zip(state["history"], expected["history"])]
    lost = differences(state, expected) if resumed_ok else ["the resumed run failed"]
    records = metric_epochs(out) if resumed_ok else []
    if records != list(range(1, EPOCHS + 1)):
        lost.append(f"metrics.jsonl epochs {records}")
    ok = (killed in (-9, 137) and resumed_from == expected_resume_epoch(phase, epoch) and resumed_ok and not lost
          and not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir()))
    return dict(kind="kill -9", fault=fault, via="command line" if via_cli else "forked process", exit=killed,
                resumed_from=resumed_from, left_behind=half_written, redone=epoch - resumed_from if resumed_from < epoch else 0,
                lost=lost, survived=ok, detail=detail)


def nan_trial(root: Path, reference: Reference, phase: str, epoch: int) -> dict:
    out = root / f"nan-{phase}-{epoch}"
    fault = f"nan:phase={phase}:epoch={epoch}"
    train(out, fault=fault, epochs=epoch)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    record = history[-1]
    state = final_state(out)
    # The trained state after the skipped epoch is the state before it: compare with a run of epoch - 1
    # epochs (history, epoch counter and checkpoint names necessarily differ).
    lost = differences(state, reference.state(epoch - 1), ignore=("history", "epoch"))
    right = record.get("skipped") is True and record.get("skip_reason") == NAN_REASON[phase]
    ok = right and not lost and all(not r.get("skipped") for r in history[:-1])
    return dict(kind="NaN", fault=fault, via="in-process", exit=0, resumed_from=None, left_behind=[],
                redone=0, lost=lost if right else lost + [f"record {_untimed(record)}"], survived=ok,
                detail=f"skip_reason={record.get('skip_reason')!r}: {record.get('skip_detail', '')}")


def reward_trial(root: Path, reference: Reference, garbage: str, epoch: int) -> dict:
    from elbo_kernels.models import digits
    from elbo_kernels.train.trainer import RewardError

    out = root / f"reward-{garbage}-{epoch}"
    calls = {"n": 0}

    def broken(images, prompts, metadata=None):
        calls["n"] += 1
        if calls["n"] == epoch:
            if garbage == "raises":
                raise ConnectionError("reward server unreachable (injected)")
            if garbage == "wrong_length":
                scores, info = digits.reward_fn(images, prompts, metadata)
                return {"avg": np.asarray(scores["avg"])[:-1]}, info
            if garbage == "not_a_dict":
                return [0.5] * len(prompts), {}
        return digits.reward_fn(images, prompts, metadata)

    message = ""
    try:
        train(out, reward_fn=broken)
        stopped = False
    except RewardError as error:
        stopped, message = True, str(error)
    latest = latest_checkpoint(out / "checkpoints")
    resumed_from = int(latest.name.split("-")[1]) if latest else 0
    train(out, resume=True)
    lost = differences(final_state(out), reference.state())
    ok = stopped and resumed_from == epoch - 1 and f"epoch {epoch}" in message and not lost
    return dict(kind="reward", fault=f"reward {garbage} at epoch {epoch}", via="in-process", exit=0,
                resumed_from=resumed_from, left_behind=[], redone=epoch - resumed_from, lost=lost, survived=ok,
                detail=message[:160])


def multiprocess_trial(root: Path, fault: str) -> dict:
    """Two processes (accelerate, gloo) with a fault on one: both must take the same decision, no deadlock.

    Runs tests/multiprocess_job.py (2 epochs). A NaN on process 1 must skip epoch 2 on both; a
    reward failure on process 1 must stop both with RewardError.
    """
    out = root / f"multiprocess-{fault.replace(':', '_').replace('=', '-')}"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(ROOT / "tests" / "multiprocess_job.py"), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", ELBO_KERNELS_FAULT=fault, PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        code, log = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
        code, log = None, "timed out after 300 s (a deadlock)"
    if fault.startswith("nan"):
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
        ok = [r.get("skipped") for r in history] == [False, True]
        detail = history[-1].get("skip_detail", "") if history else log[-500:]
    else:
        ok = code not in (0, None) and log.count("RewardError: the reward function failed") >= 2
        detail = "both processes raised RewardError" if ok else log[-500:]
    return dict(kind="2 processes", fault=fault, via="accelerate launch", exit=code, resumed_from=None,
                left_behind=[], redone=0, lost=[] if ok else ["decision differs or deadlock"], survived=ok,
                detail=detail)


def suite(root: Path, quick: bool, notes: Optional[List[str]] = None) -> List[dict]:
    torch.set_num_threads(1)
    reference = Reference(root)
    epochs = [3] if quick else list(range(1, EPOCHS + 1))
    results = []
    for phase in KILL_PHASES:
        for epoch in epochs:
            results.append(kill_trial(root, reference, phase, epoch))
    for phase in ("rollout", "checkpoint_write") if not quick else ("checkpoint_write",):
        results.append(kill_trial(root, reference, phase, 3, via_cli=True))
    for phase in NAN_PHASES:
        for epoch in ([2] if quick else [1, 2, 4]):
            results.append(nan_trial(root, reference, phase, epoch))
    for garbage in ("raises", "wrong_length", "not_a_dict"):
        for epoch in ([3] if quick else [1, 3]):
            results.append(reward_trial(root, reference, garbage, epoch))
    for fault in ("nan:phase=velocity:epoch=2:process=1",) + (() if quick else (
            "nan:phase=grad:epoch=2:process=1", "nan:phase=reward:epoch=2:process=0",
            "raise:phase=reward:epoch=2:process=1")):
        results.append(multiprocess_trial(root, fault))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import reliability_cases

    results += reliability_cases.operational_suite(sys.modules[__name__], root, reference, quick,
                                                   (notes if notes is not None else []).append)
    return results


# --- the report -------------------------------------------------------------------------------------
def render(results: List[dict], seconds: float, quick: bool, notes: List[str] = ()) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import reliability_cluster as cluster

    rows: Dict[tuple, dict] = {}
    for r in results:
        key = (r["kind"], r["fault"].split(":epoch=")[0].rsplit(" at epoch", 1)[0]
               + (":" + r["fault"].split(":")[-1] if ":process=" in r["fault"] else ""), r["via"])
        row = rows.setdefault(key, dict(injected=0, survived=0, redone=0, lost=0, epochs=[]))
        row["injected"] += 1
        row["survived"] += int(r["survived"])
        row["redone"] += r["redone"]
        row["lost"] += len(r["lost"])
        if "epochs" in r:
            epoch = r["epochs"]
        elif "epoch=" in r["fault"]:
            epoch = r["fault"].split("epoch=")[1].split(":")[0]
        else:
            epoch = r["fault"].rsplit(" ", 1)[-1]
        row["epochs"].append(epoch)
    lines = [
        "# Reliability: fault-injection results",
        "",
        "GENERATED by `python scripts/reliability_report.py" + (" --quick" if quick else "") + "`; do not edit by "
        "hand. The harness (and what each fault means) is documented in that script and in "
        "`elbo_kernels/train/faults.py`; `tests/test_reliability.py` runs a reduced form in CI.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, one thread, "
        f"backend \"torch\". {len(results)} trials in {seconds:.0f} s.",
        "",
        "Configuration: the embedded DigitEval task, 4 prompts x 2 samples per epoch, 2 ELBO draws, "
        f"{EPOCHS} epochs, a checkpoint every epoch (2 kept), lr 0.01.",
        "",
        "## What the trainer does",
        "",
        "- **Non-finite values** (rollout latents, any policy's velocity, rewards, the loss, the gradients): "
        "the epoch's update is skipped -- no optimizer step, old and EMA policies untouched, the rollout "
        "never trained on -- and `metrics.jsonl` records `\"skipped\": true`, `skip_reason` (one of "
        "rollout, model_output, reward, loss, gradients), `skip_detail` and `consecutive_skips`. After "
        "`max_consecutive_skips` (default 5) skips in a row the run stops with `NonFiniteError`; with "
        "`on_non_finite: raise` it stops at the first. A checkpoint never holds a NaN (parameters, old / "
        "EMA copies and optimizer state are checked before writing).",
        "- **Reward failures**: a reward function that raises, or returns anything but one number per image "
        "in `scores[\"avg\"]`, stops the run with `RewardError` naming the epoch (never a silent drop, "
        "truncation or broadcast); NaN scores are a skip as above. Retries and backoff for HTTP rewards "
        "live in `elbo_kernels/rewards/remote.py`.",
        "- **kill -9 at any instant**: checkpoints are written to a temporary directory, every file fsynced, "
        "then a `COMPLETE` marker listing each file's size and sha256, then one atomic rename; pruning "
        "removes a directory's marker before its files. `--resume` and the start of every run remove "
        "leftover temporary directories and prune to `keep_checkpoints` (never the checkpoint just written "
        "or resumed from). `--resume` refuses a checkpoint whose config differs in a key that shapes the run "
        "(seed, batch, LoRA, ...). All randomness is keyed by (seed, epoch, sample index), so the resumed "
        "run is the uninterrupted one, bitwise on CPU.",
        "- **Corrupt checkpoints**: before loading, `--resume` compares every file's sha256 with the marker "
        "(`digits.load_pipeline` does the same for an adapter inside a checkpoint). A checkpoint that fails "
        "is never loaded: a warning names it and the file, it is renamed `corrupt-epoch-XXXXXX` (kept for "
        "inspection), and resume falls back to the newest one that verifies; if none does, one line names "
        "the directory and nothing is loaded. Verification reads every file once: "
        "`benchmarks/checkpoint_verify.py` measures it for an SD3.5-M-sized LoRA checkpoint.",
        "- **Disks and directories**: a full disk (or quota, or file-size limit) while writing a checkpoint "
        "removes the half-written directory and stops with one line naming the path and the free space; "
        "the previous checkpoint stays, and `--resume` once there is space is exact. A read-only or "
        "unwritable output directory is one line naming the path. An output directory belongs to one run: "
        "starting a run where another run's files are is refused (`--resume` continues it, `--overwrite` "
        "deletes it first), so `summary.json` never names a checkpoint that is not there.",
        "- **Command line**: an error a user can act on is one line on stderr and an exit code per class "
        "(2 usage / config, 3 resume, 4 storage, 5 reward, 6 non-finite, 7 model weights, 75 stopped by a "
        "signal after a verified checkpoint; 1 is a bug and shows the traceback); `--debug` or `ELBO_KERNELS_DEBUG=1` shows the traceback for any error. "
        "Abbreviated flags are rejected (`--epoch 3` is not `--epochs 3`).",
        "- **Several processes**: every skip or reward failure is agreed across processes (one small "
        "all-reduce per decision point), so no process waits forever for another that skipped. Any other "
        "error on one process (an op's ValueError, an out-of-memory, a NonFiniteError) is written to the "
        "process group's store before it propagates; every other process watches that key and stops "
        "within a second, naming the process and the error, instead of waiting in a collective.",
        *cluster.WHAT_IT_DOES,
        "- **Fault injection**: `ELBO_KERNELS_FAULT=\"kill:phase=checkpoint_write:epoch=3\"` (see "
        "`elbo_kernels/train/faults.py` for actions and phases).",
        "",
        "## Results",
        "",
        "| fault | how | epochs | injected | survived | epochs redone | lost |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (kind, fault, via), row in rows.items():
        lines.append(f"| {kind}: `{fault}` | {via} | {','.join(row['epochs'])} | {row['injected']} | "
                     f"{row['survived']} | {row['redone']} | {row['lost']} |")
    failed = [r for r in results if not r["survived"]]
    lines += [
        "",
        "- **survived** (kill -9): the process died by SIGKILL; the checkpoint resumed from is the last "
        "complete one (a half-written or unrenamed one is never loaded); the resumed run's final "
        "parameters, old / EMA adapters, optimizer state and metrics records are bitwise equal to an "
        "uninterrupted run's; no temporary directory is left behind.",
        "- **survived** (NaN): the epoch is logged `skipped: true` with the right `skip_reason`, and the "
        "trained state equals that of a run stopped just before the epoch (optimizer, old and EMA untouched).",
        "- **survived** (reward): the run stops with `RewardError` naming the epoch, without an update from "
        "that rollout; resuming with a working reward gives the uninterrupted run bitwise (nothing "
        "dropped, nothing trained on twice).",
        "- **survived** (2 processes): a fault on one process makes every process take the same "
        "decision at the same point (skip the epoch, or raise RewardError), with no deadlock.",
        "- **epochs redone**: epochs recomputed after a resume (the work since the last checkpoint); "
        "recomputation is exact, so it costs time, not results.",
        "- **survived** (corrupt checkpoint): the corrupt checkpoint is named in a warning and set aside, "
        "resume falls back to the previous one, and the finished run equals the uninterrupted one bitwise; "
        "with every checkpoint corrupt, one line names the directory and nothing is loaded or changed.",
        "- **survived** (disk): one line on stderr naming the path (and, for a full disk, the free space), "
        "exit code 4, no traceback; after a full disk the run moved to a disk with space resumes and equals "
        "the uninterrupted run bitwise.",
        "- **survived** (output directory): the re-run is refused in one line and leaves the finished run's "
        "files byte for byte; with `--overwrite` it replaces it and its adapter loads with "
        "`digits.load_pipeline(adapter=...)`.",
        "- **survived** (2 processes, an error on one): both processes end (the launch returns, non-zero) "
        "and process 0 names process 1's error.",
        *cluster.SURVIVED,
        "- **lost**: tensors, records or counters that differ from the reference. The goal is 0.",
        "",
        f"Result: {len(results) - len(failed)} of {len(results)} trials survived; "
        f"{sum(len(r['lost']) for r in results)} items lost.",
    ]
    if notes:
        lines += ["", "Not run here: " + "; ".join(notes) + "."]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            lines.append(f"- `{r['fault']}` ({r['via']}): exit {r['exit']}, resumed from {r['resumed_from']}, "
                         f"lost {r['lost'][:5]}, {r['detail'][:300]}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="one trial per fault (CI)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"), help="where to write the report")
    parser.add_argument("--workdir", default=None, help="where the trial runs go (default: a temporary directory)")
    args = parser.parse_args(argv)
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        root = Path(args.workdir or tmp)
        notes: List[str] = []
        results = suite(root, args.quick, notes)
    seconds = time.perf_counter() - start
    Path(args.output).write_text(render(results, seconds, args.quick, notes))
    failed = [r for r in results if not r["survived"]]
    print(f"{len(results) - len(failed)} of {len(results)} trials survived; report: {args.output}")
    for r in failed:
        print(f"FAILED {r['fault']} ({r['via']}): lost {r['lost'][:5]} {r['detail'][:500]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
