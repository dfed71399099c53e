"""The design-space benchmark runs end to end in its --quick mode (the variance study: tests/test_variance_study.py)."""

import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    # A plain import (not from a file spec): the design-space workers are spawned processes that
    # import the module by name, and spawn hands them the parent's sys.path.
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def test_design_space_quick_writes_every_method_with_its_sweep_and_speedup(tmp_path):
    result = load("design_space").main(["--quick", "--no-memory", "--workers", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "design_space.json").read_text())
    assert set(written["methods"]) == {"flowgrpo", "diffusionnft", "elbo_pepg_ode"}
    for method in written["methods"].values():
        assert method["chosen_lr"] in [float(lr) for lr in method["sweep"]]
        assert {"cpu_seconds", "train_seconds", "transformer_rows", "diversity"} <= set(method["seeds"])
        assert method["runs"][0]["curve"], "every run is evaluated at least once"
    assert set(written["speedup_vs_flowgrpo"]) == set(result["methods"])
    assert (tmp_path / "design_space.md").read_text().startswith("# Design-space study")
    assert (tmp_path / "design_space.png").stat().st_size > 0

