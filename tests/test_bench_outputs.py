"""benchmarks/bench_kernels.py writes the committed results only when asked (--save)."""

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "bench_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**values):
    return argparse.Namespace(**{"out": None, "quick": False, "save": False, **values})


def test_default_run_writes_outside_the_committed_results():
    path = _bench().output_path(_args(), "cpu")
    assert path == ROOT / "outputs" / "bench" / "kernels_cpu.json"
    assert (ROOT / "benchmarks" / "results") not in path.parents


def test_save_writes_the_committed_results():
    assert _bench().output_path(_args(save=True), "cpu") == ROOT / "benchmarks" / "results" / "kernels_cpu.json"


def test_out_wins_and_quick_runs_are_named_apart(tmp_path):
    bench = _bench()
    assert bench.output_path(_args(out=str(tmp_path / "x.json"), save=True), "cpu") == tmp_path / "x.json"
    assert bench.output_path(_args(quick=True), "cuda").name == "kernels_cuda_quick.json"
