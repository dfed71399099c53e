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


def test_plot_with_one_n_has_that_integer_as_its_only_tick(tmp_path, monkeypatch):
    import matplotlib.figure

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    rows = [{"op": "elbo", "dtype": "float32", "shape": [32, 16, 64, 64], "variant": v, "gbps": g}
            for v, g in (("eager", 10.0), ("cpu", 30.0))]
    _bench().plot({"rows": rows, "copy_bandwidth_gbps": 40.0, "device": "cpu", "machine": "test"}, tmp_path / "p.png")
    (ax,) = figures[0].axes
    assert list(ax.get_xticks()) == [32]


def test_the_cpu_memory_profiler_writes_nothing_to_stderr():
    import subprocess
    import sys

    code = "import torch, memory; print(memory.peak_bytes(lambda: torch.ones(1000).sum(), 'cpu'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and int(done.stdout) > 0, done.stderr
    assert done.stderr == ""  # kineto's "USDT: ... profiler_start/stop" lines are silenced
