"""The prepared device check: one run on one GPU machine as it is, everything back in at most 8 files.

The machine (docs/gpu_check.md): python3 with torch, triton, pytest, accelerate, peft,
transformers, safetensors, ninja and nvcc; no diffusers; no network; this repository's
tracked files copied in, nothing installed; at most 8 files come back from $OUT. So this
script installs nothing from an index: the package runs from the checkout (PYTHONPATH),
wheels carried in the git-ignored .whl/ (scripts/gpu_wheels.sh prepares them) are
installed with --no-index into a temporary folder, and every cache lives outside $OUT.

Steps, in order of value, each under its own time limit (the sum is under 7 minutes on an
H100; a step over its limit gets SIGINT, so pytest and the benchmarks still write what they
have, then SIGKILL 20 s later):

  build       build the C++/CUDA extension for this GPU's arch only, then
              `python3 -m elbo_kernels.cli info`. A failed CUDA build is recorded once; later
              steps load the CPU-only build (or none) instead of retrying it, and the Triton
              steps still run.
  tests       tests/test_gpu.py, tests/test_op_*.py, tests/test_triton_launch.py on the GPU,
              fp32 and bf16, the triton and cuda backends (a few hundred cases; the Triton
              elementwise kernels run one config, so each shape compiles once).
  bench       benchmarks/bench_kernels.py at [N, 16, 64, 64], N = 64 and 432: eager, fused
              triton and cuda, torch.compile (static shapes, compiled last), GB/s against the
              same run's copy bandwidth, peak memory.
  train_step  benchmarks/bench_train_step.py: an SD3.5-M-shaped LoRA step (random bf16
              weights made on the GPU, 64x64 latents): ELBO with K draws batched vs the
              trajectory estimator, CFG off and on. Needs diffusers: skipped in one line
              when it is neither in the image nor carried.

$OUT gets: summary.json (machine, every step's verdict, time, test counts, the tail of
its log; rewritten after each step), gpu_check.log (every step's output), pytest.xml,
kernels.json / .png / .md, train_step.json: 7 files, no folders.

    python3 scripts/gpu_check.py                 on the GPU machine (scripts/gpu_check.sh calls this)
    python3 scripts/gpu_check.py --rehearse      CI: the same steps from a copy of `git ls-files`, no
                                                 network, CPU stand-ins, then $OUT checked against the
                                                 8-file / 2-folder rule

Exit status: the number of failed or timed-out steps (plus $OUT rule violations).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent

# What comes back from the device machine's $OUT (the device tool's limits).
OUT_MAX_FILES = 8
OUT_MAX_DEPTH = 2  # folders below $OUT
OUT_MAX_FILE_BYTES = 16 * 2**20
OUT_MAX_TOTAL_BYTES = 64 * 2**20
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

# Seconds per step on the GPU machine (their sum is 7 minutes; each step normally ends well inside
# its own: the build is the C++ file and the CUDA file compiled in parallel, measured at 214-248 s
# each on 2 shared cores, so about a minute on one free core), and in the CPU rehearsal (2 cores:
# the interpreter and a C++ build are slower than any GPU step).
DEVICE_LIMITS = {"build": 140, "info": 30, "tests": 120, "bench": 80, "train_step": 50}
REHEARSAL_LIMITS = {"build": 600, "info": 120, "tests": 900, "bench": 400, "train_step": 300}
KILL_GRACE = 20  # seconds between SIGINT and SIGKILL

WHEELS = ".whl"
EXIT_NO_DIFFUSERS = 3  # benchmarks/bench_train_step.py


@dataclass
class Step:
    name: str
    cmd: List[str]
    limit: float
    env: Dict[str, str]


def out_violations(out: Path) -> List[str]:
    """What in ``out`` would not come back from the device machine (empty: all of it would)."""
    problems, files, total = [], [], 0
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if any(not OUT_NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_' and '-'")
        if path.is_symlink():
            problems.append(f"{rel}: a link")
            continue
        if path.is_dir():
            continue
        if not path.is_file():
            problems.append(f"{rel}: not a plain file")
            continue
        files.append(rel)
        if len(rel.parts) - 1 > OUT_MAX_DEPTH:
            problems.append(f"{rel}: more than {OUT_MAX_DEPTH} folders down")
        size = path.stat().st_size
        total += size
        if size > OUT_MAX_FILE_BYTES:
            problems.append(f"{rel}: {size / 2**20:.1f} MiB, over {OUT_MAX_FILE_BYTES // 2**20} MiB")
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files, over {OUT_MAX_FILES}: {', '.join(map(str, files))}")
    if total > OUT_MAX_TOTAL_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB in all, over {OUT_MAX_TOTAL_BYTES // 2**20} MiB")
    return problems


def run_step(step: Step, log: Path, cwd: Path) -> dict:
    """Run one step in its own process group, output appended to ``log``; SIGINT at the limit."""
    start = time.monotonic()
    with log.open("a") as sink:
        sink.write(f"\n===== {step.name} (limit {step.limit:.0f} s): {' '.join(step.cmd)}\n")
        sink.flush()
        offset = sink.tell()
        proc = subprocess.Popen(step.cmd, cwd=cwd, env=step.env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=step.limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGINT)
            try:
                rc = proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                rc = proc.wait()
    seconds = time.monotonic() - start
    with log.open() as source:
        source.seek(offset)
        tail = source.read().splitlines()[-25:]
    verdict = "timed out" if timed_out else "ok" if rc == 0 else f"failed (exit {rc})"
    return {"step": step.name, "verdict": verdict, "rc": rc, "seconds": round(seconds, 1), "limit": step.limit,
            "cmd": step.cmd, "tail": tail}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def junit_counts(path: Path) -> Optional[dict]:
    """tests / failures / errors / skipped from pytest's JUnit XML (None when absent or unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_cases"] = [
        f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ][:40]
    return counts


def probe(python: str, env: Dict[str, str], code: str, cwd: Path) -> Optional[str]:
    """stdout of ``python -c code`` (None if it fails), for facts about the machine."""
    proc = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else None


MACHINE_PROBE = r"""
import json, platform, torch
facts = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
         "cuda_available": torch.cuda.is_available()}
try:
    import triton
    facts["triton"] = triton.__version__
except Exception as exc:
    facts["triton"] = f"not importable ({type(exc).__name__})"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    facts.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                 memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                 l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1))
import elbo_kernels
facts["elbo_kernels_from"] = elbo_kernels.__file__
print(json.dumps(facts))
"""


def install_wheels(python: str, root: Path, site: Path, log: Path) -> str:
    """Wheels carried in .whl/, installed with --no-index into ``site``; says what happened."""
    wheels = sorted((root / WHEELS).glob("*.whl"))
    if not wheels:
        return "no wheels carried (.whl/ absent or empty)"
    cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site)] + [str(w) for w in wheels]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as sink:
        sink.write(f"===== wheels: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        return f"installing {len(wheels)} carried wheels FAILED (exit {proc.returncode}); see gpu_check.log"
    return f"installed {len(wheels)} carried wheels: {', '.join(w.name for w in wheels)}"


def steps_for(args, python: str, env: Dict[str, str], out: Path) -> List[Step]:
    limits = REHEARSAL_LIMITS if args.rehearse else DEVICE_LIMITS
    tests = ["tests/test_gpu.py"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_op_*.py")) \
        + ["tests/test_triton_launch.py"]
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={out / 'pytest.xml'}"]
    if probe(python, env, "import xdist", ROOT) is not None:
        # Processes that compile the Triton kernels in parallel: 8 on the 16-core GPU host.
        pytest += ["-n", "2" if args.rehearse else "8"]
    if probe(python, env, "import pytest_timeout", ROOT) is not None:
        pytest += ["--timeout", "600" if args.rehearse else "90"]
    test_env = dict(env, ELBO_KERNELS_TEST_DTYPES="float32,bfloat16", ELBO_KERNELS_TRITON_AUTOTUNE="0",
                    ELBO_KERNELS_TEST_BACKENDS="triton,cpu" if args.rehearse else "triton,cuda")
    if args.rehearse:
        bench = ["--device", "cpu", "--sizes", "2", "--dtypes", "float32", "--repeats", "1"]
        train = ["--smoke", "--device", "cpu"]
        build = [python, "-m", "elbo_kernels.ops._cpp"]
    else:
        # N = 432 first (48 prompts x 9 draws, far beyond L2): what a stopped run must not miss.
        bench = ["--device", "cuda", "--sizes", "432", "64", "--dtypes", "bfloat16", "float32", "--repeats", "10"]
        train = ["--device", "cuda"]
        build = [python, "-m", "elbo_kernels.ops._cpp", "--require_cuda"]
    return [
        Step("build", build, limits["build"], dict(env, ELBO_KERNELS_REQUIRE_CPP="0")),
        Step("info", [python, "-m", "elbo_kernels.cli", "info"], limits["info"], env),
        Step("tests", pytest + tests, limits["tests"], test_env),
        Step("bench", [python, "benchmarks/bench_kernels.py", *bench, "--out", str(out / "kernels.json")],
             limits["bench"], env),
        Step("train_step", [python, "benchmarks/bench_train_step.py", *train, "--out", str(out / "train_step.json")],
             limits["train_step"], env),
    ]


def check(args) -> int:
    """The steps, here: the GPU machine (or, with --rehearse, the CPU copy made by rehearse())."""
    python = args.python
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    # A fixed folder outside $OUT: a second run on the same machine reuses the build and the Triton cache.
    work = Path(os.environ.get("GPU_CHECK_WORK") or Path(tempfile.gettempdir()) / "elbo_kernels_gpu_check")
    work.mkdir(parents=True, exist_ok=True)
    site = work / "site"
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(work / "torch_extensions"))  # never under $OUT
    env.setdefault("TRITON_CACHE_DIR", str(work / "triton_cache"))
    env.pop("ELBO_KERNELS_REQUIRE_CPP", None)  # a failed build is recorded, never a collection error
    if args.rehearse:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="", ELBO_KERNELS_REHEARSE="1")
    else:
        env.update(TRITON_INTERPRET="0", MAX_JOBS=env.get("MAX_JOBS") or str(os.cpu_count() or 8))
    wheels = install_wheels(python, ROOT, site, log)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([str(site)] if site.is_dir() else []) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    summary = {"mode": "rehearsal (CPU stand-ins)" if args.rehearse else "device", "wheels": wheels,
               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": []}
    facts = probe(python, env, MACHINE_PROBE, ROOT)
    summary["machine"] = json.loads(facts) if facts else "the probe failed: torch or elbo_kernels not importable"
    if isinstance(summary["machine"], dict):
        origin = Path(summary["machine"]["elbo_kernels_from"]).resolve()
        if ROOT not in origin.parents:
            summary["machine"]["warning"] = f"elbo_kernels imported from {origin}, not from this checkout"
        capability = summary["machine"].get("capability")
        if capability and not env.get("TORCH_CUDA_ARCH_LIST"):
            env["TORCH_CUDA_ARCH_LIST"] = f"{capability[0]}.{capability[1]}"  # this GPU's arch only
    smi = shutil.which("nvidia-smi")
    if smi:
        summary["nvidia_smi"] = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip()
    print(f"gpu_check: {summary['mode']}; {wheels}; machine {json.dumps(summary['machine'])}", flush=True)
    failures = 0
    for step in steps_for(args, python, env, out):
        if args.steps and step.name not in args.steps:
            continue
        if step.name == "train_step" and probe(python, step.env, "import diffusers", ROOT) is None:
            result = {"step": step.name, "verdict": "skipped", "seconds": 0, "limit": step.limit,
                      "tail": ["diffusers is not importable here: carry it as wheels (scripts/gpu_wheels.sh)"]}
        else:
            result = run_step(step, log, ROOT)
        if step.name == "build" and result["rc"] != 0:
            # Recorded once: later steps load what was built (or nothing) instead of rebuilding.
            flag = "ELBO_KERNELS_BUILD_CUDA" if result["rc"] == 2 else "ELBO_KERNELS_BUILD_CPP"
            env[flag] = "0"
            result["note"] = f"later steps run with {flag}=0"
        if step.name == "tests":
            result["junit"] = junit_counts(out / "pytest.xml")
        if step.name == "train_step" and result.get("rc") == EXIT_NO_DIFFUSERS:
            result["verdict"] = "skipped"
        failures += result["verdict"] not in ("ok", "skipped")
        summary["steps"].append(result)
        _write_summary(out, summary)
        print(f"--- {step.name}: {result['verdict']} in {result['seconds']} s (limit {step.limit:.0f} s)", flush=True)
        print("\n".join("    " + line for line in result["tail"][-12:]), flush=True)
    summary["out_violations"] = out_violations(out)
    summary["failures"] = failures
    _write_summary(out, summary)
    for problem in summary["out_violations"]:
        print(f"$OUT: {problem}", file=sys.stderr)
    print(f"gpu_check: {failures} step(s) failed; {len(summary['out_violations'])} $OUT problem(s); "
          f"results in {out}", flush=True)
    return failures + len(summary["out_violations"])


def _write_summary(out: Path, summary: dict) -> None:
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, out / "summary.json")


def rehearse(args) -> int:
    """The device run, rehearsed here: a copy of the tracked files (plus carried .whl/), no network,
    an interpreter that must not find this package installed, CPU stand-ins; $OUT checked."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    copy = Path(tempfile.mkdtemp(prefix="elbo_kernels_rehearsal_"))
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / name)
    if (ROOT / WHEELS).is_dir():
        shutil.copytree(ROOT / WHEELS, copy / WHEELS)
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    installed = subprocess.run([args.python, "-c", "import elbo_kernels; print(elbo_kernels.__file__)"],
                               cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if installed.returncode == 0:
        print(f"rehearsal: {args.python} already has elbo_kernels ({installed.stdout.strip()}); the device has "
              "nothing installed: use an interpreter without it (PYTHON=...)", file=sys.stderr)
        return 1
    cmd = [args.python, str(copy / "scripts" / "gpu_check.py"), "--child", "--rehearse", "--out", str(out),
           "--python", args.python] + (["--steps", *args.steps] if args.steps else [])
    isolate = shutil.which("unshare")
    if isolate and subprocess.run([isolate, "-n", "true"], capture_output=True).returncode == 0:
        cmd = [isolate, "-n"] + cmd
        how = "in a network namespace of its own (unshare -n): no network"
    else:
        guard = copy / ".no_network"
        guard.mkdir()
        (guard / "sitecustomize.py").write_text(NO_NETWORK_GUARD)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")]))
        how = "with a guard that refuses every connection (unshare -n is not allowed here)"
    count = sum(1 for name in listed.split(b"\0") if name)
    print(f"rehearsal: {count} tracked files copied to {copy}; running {how}", flush=True)
    rc = subprocess.run(cmd, cwd=copy).returncode
    problems = out_violations(out)
    for problem in problems:
        print(f"rehearsal $OUT: {problem}", file=sys.stderr)
    print(f"rehearsal: exit {rc}; $OUT holds {sum(1 for p in out.rglob('*') if p.is_file())} files, "
          f"{len(problems)} problem(s)", flush=True)
    shutil.rmtree(copy, ignore_errors=True)
    return rc + len(problems)


NO_NETWORK_GUARD = '''import socket
def _refuse(self, address, *args, **kwargs):
    raise OSError(f"the device check's rehearsal has no network (connect to {address!r} refused)")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rehearse", action="store_true", help="CPU rehearsal of the device run (CI)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_check_out"),
                        help="where the results go (default $OUT, else ./gpu_check_out)")
    parser.add_argument("--python", default=os.environ.get("PYTHON") or "python3",
                        help="the interpreter the steps run (default $PYTHON, else python3)")
    parser.add_argument("--steps", nargs="+", default=None, choices=list(DEVICE_LIMITS),
                        help="only these steps (a second run on a warm machine: the failed ones)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rehearse and not args.child:
        return rehearse(args)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
