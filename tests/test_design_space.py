"""The design-space and estimator-variance benchmarks run end to end in their --quick modes."""

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


def test_variance_study_quick_compares_noise_options_at_equal_draws(tmp_path):
    result = load("variance_study").main(["--quick", "--out", str(tmp_path)])
    noises = {row["noise"] for row in result["rows"]}
    assert {"iid", "antithetic", "antithetic_paired_t", "independent"} <= noises
    assert all(row["log_ratio_var"] > 0 for row in result["rows"])
    # Common random numbers (e_theta and e_old at the same draws) are what make l usable at all.
    assert all(gain > 10 for gain in result["common_random_numbers_gain"].values())
    assert (tmp_path / "variance.md").exists() and (tmp_path / "variance.png").exists()
