"""scripts/import_graph.py: the package's import graph has ops/ at the bottom and no cycle anywhere."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "import_graph.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def test_ops_import_nothing_above_them_and_sit_on_no_cycle():
    result = _run("--scope", "elbo_kernels.ops")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imports from elbo_kernels/ops/ upward: 0" in result.stdout
    assert "elbo_kernels.ops.residual_sums\n    -> elbo_kernels.ops._backends" in result.stdout


def test_the_whole_package_has_no_import_cycle():
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cycles: 0" in result.stdout


def _write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_reports_a_cycle_and_an_upward_import_and_fails(tmp_path):
    package = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "backends.py": "from .ops import low\n",
        "ops/__init__.py": "",
        "ops/low.py": "def f():\n    from ..backends import thing\n",
        "ops/clean.py": "from . import low\n",
    })
    result = _run("--root", str(package))
    assert result.returncode == 1
    assert "pkg.ops.low\n    -> pkg.backends   [in function]" in result.stdout
    assert "cycles: 1" in result.stdout and "2 modules: pkg.backends, pkg.ops.low" in result.stdout
    assert "imports from pkg/ops/ upward: 1" in result.stdout


def test_scope_limits_which_cycles_fail(tmp_path):
    package = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "import pkg.a\n",
        "ops/__init__.py": "",
    })
    assert _run("--root", str(package)).returncode == 1
    scoped = _run("--root", str(package), "--scope", "pkg.ops")
    assert scoped.returncode == 0 and "cycles: 1 (0 through pkg.ops)" in scoped.stdout
