"""The design-space benchmark runs end to end in its --quick mode (the variance study: tests/test_variance_study.py)."""

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    # A plain import (not from a file spec): the design-space workers are spawned processes that
    # import the module by name, and spawn hands them the parent's sys.path.
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.mark.slow
def test_design_space_quick_writes_every_method_with_its_sweep_intervals_and_speedups(tmp_path):
    result = load("design_space").main(["--quick", "--no_memory", "--workers", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "design_space.json").read_text())
    assert set(written["methods"]) == {"flowgrpo_nocfg", "diffusionnft", "recipe", "recipe_sde"}
    assert written["methods"]["recipe_sde"]["chosen"] == written["methods"]["recipe"]["chosen"]
    for method in written["methods"].values():
        assert f"{method['chosen']['lr']:g}/{method['chosen']['beta']:g}" in method["grid"]
        assert method["counts"]["seeds"] == 2 == len(method["runs"])
        counted = method["counts"]
        assert counted["reached"] + counted["collapsed"] + counted["budget"] == 2
        for key in ("work_rows", "cpu_seconds"):
            stat = method["at_target"][key]
            assert stat["n"] == 2 and len(stat["values"]) == 2
        assert method["runs"][0]["curve"], "every run is evaluated at least once"
        point = method["runs"][0]["curve"][0]
        assert point["work_rows"] > point["transformer_rows"] > 0  # backward rows count twice
    assert written["speedups"]["baseline"] == "flowgrpo_nocfg"
    assert set(written["speedups"]["vs_baseline"]) == set(result["methods"])
    assert (tmp_path / "design_space.md").read_text().startswith("# Design-space study")
    assert (tmp_path / "design_space.png").stat().st_size > 0


def test_bootstrap_median_interval_matches_a_direct_resampling():
    import numpy as np

    stats = load("design_space_stats")
    values = [5.0, 1.0, 3.0, None, 2.0]  # None: a seed that never reached the target
    out = stats.median_interval(values, seed=3)
    assert out["median"] == 3.0 and out["n"] == 5
    rng = np.random.default_rng(3)
    x = np.array([5.0, 1.0, 3.0, np.inf, 2.0])
    medians = np.median(x[rng.integers(0, 5, size=(stats.BOOTSTRAP, 5))], axis=1)
    low, high = np.quantile(medians, [0.025, 0.975], method="lower")
    assert (out["low"], out["high"]) == (low, high)
    assert stats.median_interval([None, None, 1.0])["median"] == float("inf")  # most seeds failed


def test_speedup_interval_is_a_ratio_of_medians_and_failures_are_counted():
    stats = load("design_space_stats")
    out = stats.ratio_interval([10.0, 12.0, 14.0], [2.0, 3.0, 4.0])
    assert out["ratio"] == 4.0 and out["low"] <= 4.0 <= out["high"] and out["undefined"] == 0.0
    assert stats.ratio_interval([None, None, None], [1.0, 1.0, 1.0])["ratio"] == float("inf")
    assert stats.counts(["target", "collapsed", "budget", "diverged"], [True, False, False, False]) == {
        "seeds": 4, "reached": 1, "collapsed": 2, "budget": 1, "failure_reasons": ["collapsed", "diverged"]}


def test_bracketing_asks_for_the_missing_neighbours_of_an_edge_winner():
    methods = load("design_space_methods")
    grid = {(lr, beta) for lr in (1e-4, 3e-4, 1e-3) for beta in (1e-5, 1e-4, 1e-3)}
    assert methods.missing_brackets(grid, (3e-4, 1e-4)) == []  # inside the grid
    assert methods.missing_brackets(grid, (1e-3, 1e-4)) == [(3e-3, 1e-4)]  # lr edge: one step up
    assert sorted(methods.missing_brackets(grid, (1e-4, 1e-3))) == [(3e-5, 1e-3), (1e-4, 4e-3)]
    assert methods.missing_brackets({(1e-4, 0.0), (3e-4, 0.0), (1e-4, 1e-5)}, (1e-4, 0.0)) == [(3e-5, 0.0)]
    for name, m in methods.method_table().items():  # every grid holds the method's published values
        assert m["published"][0] in m["lrs"] and m["published"][1] in m["betas"], name


def test_verdict_separates_consistent_unresolved_reversed_and_larger():
    report = load("design_space_report")

    def row(low, high, factor=2.0):
        return {"study_factor": factor, "work_rows": {"ratio": (low + high) / 2, "low": low, "high": high}}

    assert report.verdict(row(1.5, 3.0)).startswith("consistent")  # holds 2, excludes 1
    assert report.verdict(row(0.0, 5.7)).startswith("not resolved")  # holds 2 and 1
    assert report.verdict(row(0.3, 0.9)).startswith("reversed")
    assert report.verdict(row(0.5, 1.2)).startswith("not reproduced")
    assert report.verdict(row(1.1, 1.6)).startswith("smaller than the study's, but")
    assert report.verdict(row(2.5, 4.0)).startswith("larger")
    assert report.verdict({"study_factor": 2.0, "work_rows": {"low": None, "high": None}}).startswith("cannot tell")


def _descendants(pid: int) -> set:
    """Live (not zombie) descendants of ``pid`` (Linux /proc)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = {int(c) for c in task.read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return {p for p in found if _alive(p)}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_study_and_leaves_no_worker_running(tmp_path):
    """Before, SIGTERM killed the study's process and its pool workers ran on as orphans (issue 24)."""
    command = [sys.executable, str(BENCHMARKS / "design_space.py"), "--quick", "--no-memory", "--workers", "2",
               "--out", str(tmp_path)]
    study = subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    workers: set = set()
    try:
        deadline = time.monotonic() + 300
        while len(workers) < 2:  # the two workers (plus multiprocessing's resource tracker)
            assert study.poll() is None and time.monotonic() < deadline, study.communicate()[1][-3000:]
            workers = {p for p in _descendants(study.pid) if "spawn_main" in _cmdline(p)}
            time.sleep(0.2)
        time.sleep(2.0)  # the workers are in their first runs
        every = _descendants(study.pid)
        study.send_signal(signal.SIGTERM)
        _, stderr = study.communicate(timeout=120)
        deadline = time.monotonic() + 60
        while {p for p in every if _alive(p)} and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: _cmdline(p) for p in every if _alive(p)}
    finally:
        study.kill()
        for pid in _descendants(study.pid) | workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert left == {}, f"left running after SIGTERM: {left}"
    assert study.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "design_space: stopped by SIGTERM; 2 worker(s) terminated" in stderr


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""
