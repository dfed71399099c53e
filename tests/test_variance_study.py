"""benchmarks/variance_study.py runs end to end in its --quick mode and writes its report."""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_variance_study_quick_compares_every_method_at_equal_rows(tmp_path):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    study = importlib.import_module("variance_study")
    result = study.main(["--quick", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "variance.json").read_text())
    assert {row["method"] for row in written["rows"]} == set(study.METHODS)
    assert len({row["rows_per_estimate"] for row in written["rows"]}) == 1, "equal transformer rows per estimate"
    default = next(row for row in result["rows"] if row["method"] == "default")
    assert default["log_ratio_reduction"]["ratio"] == 1.0 and default["grad_trace_reduction"]["ratio"] == 1.0
    for row in result["rows"]:
        assert row["log_ratio_var"] > 0 and row["grad_trace_var"] > 0
        for key in ("log_ratio_reduction", "grad_trace_reduction", "grad_proj_reduction"):
            assert row[key]["lo"] <= row[key]["hi"]
    # The proposal is a probability vector over the 10 grid steps with the 25% uniform floor.
    proposal = written["importance_proposal"]
    assert len(proposal) == 10 and abs(sum(proposal) - 1) < 1e-9 and min(proposal) >= 0.025 - 1e-12
    assert (tmp_path / "variance.md").read_text().startswith("# ELBO estimator variance")
    assert (tmp_path / "variance.png").stat().st_size > 0
