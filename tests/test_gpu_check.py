"""The device check's machinery (scripts/gpu_check.py), on CPU: what comes back from $OUT, time limits
that interrupt rather than kill, results written as they are measured, and the switches the check
sets for the package. The whole check is rehearsed in CI (`scripts/gpu_check.sh --rehearse`)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import elbo_kernels as ek

ROOT = Path(__file__).resolve().parent.parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check", ROOT / "scripts" / "gpu_check.py")


def _files(root, names, size=10):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def test_out_with_eight_files_two_folders_down_comes_back(tmp_path):
    _files(tmp_path, ["summary.json", "a/b.log", "a/b/c.txt", "k.json", "k.png", "k.md", "p.xml", "t.json"])
    assert gpu_check.out_violations(tmp_path) == []


def test_out_with_nine_files_is_refused(tmp_path):
    _files(tmp_path, [f"f{i}.txt" for i in range(9)])
    problems = gpu_check.out_violations(tmp_path)
    assert len(problems) == 1 and "9 files, over 8" in problems[0]


def test_out_three_folders_down_or_with_odd_names_is_refused(tmp_path):
    _files(tmp_path, ["a/b/c/deep.txt", "with space.txt", "ok.txt"])
    problems = gpu_check.out_violations(tmp_path)
    assert any("deep.txt: more than 2 folders down" in p for p in problems)
    assert any("with space.txt: a name" in p for p in problems)
    assert not any(p.startswith("ok.txt") for p in problems)


def test_out_file_over_16_mib_is_refused(tmp_path):
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(16 * 2**20 + 1)
    problems = gpu_check.out_violations(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("big.bin: 16.0 MiB, over 16 MiB")


def test_a_step_over_its_limit_gets_sigint_and_keeps_its_output(tmp_path):
    """The limit interrupts (SIGINT, like Ctrl-C) so the step can write what it has; not a kill."""
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(f"""
        import time
        print("started", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            open({str(tmp_path / 'partial.json')!r}, "w").write("{{}}")
            print("wrote partial results", flush=True)
            raise SystemExit(130)
    """))
    step = gpu_check.Step("slow", [sys.executable, str(script)], 3, dict(os.environ))
    result = gpu_check.run_step(step, tmp_path / "log.txt", tmp_path)
    assert result["verdict"] == "timed out" and result["rc"] == 130
    assert result["seconds"] < 30
    assert (tmp_path / "partial.json").exists()
    assert result["tail"][-1] == "wrote partial results"


def test_a_failing_step_is_recorded_with_its_exit_code(tmp_path):
    step = gpu_check.Step("fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(4)"], 30,
                          dict(os.environ))
    result = gpu_check.run_step(step, tmp_path / "log.txt", tmp_path)
    assert result["verdict"] == "failed (exit 4)" and result["tail"] == ["boom"]
    assert "===== fails" in (tmp_path / "log.txt").read_text()


def test_pytest_interrupted_at_the_limit_still_writes_its_junit_xml(tmp_path):
    tests = tmp_path / "test_slow.py"
    tests.write_text("import time\n\ndef test_quick():\n    pass\n\ndef test_slow():\n    time.sleep(120)\n")
    xml = tmp_path / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", str(tests)]
    result = gpu_check.run_step(gpu_check.Step("tests", cmd, 15, dict(os.environ)), tmp_path / "log.txt", tmp_path)
    assert result["verdict"] == "timed out"
    counts = gpu_check.junit_counts(xml)
    assert counts is not None and counts["passed"] >= 1


def test_junit_counts_reads_failures_and_names_them(tmp_path):
    xml = tmp_path / "p.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                   '<testcase classname="tests.test_a" name="test_x"><failure message="no"/></testcase>'
                   '<testcase classname="tests.test_a" name="test_y"/>'
                   '<testcase classname="tests.test_a" name="test_z"><skipped/></testcase>'
                   '</testsuite></testsuites>')
    counts = gpu_check.junit_counts(xml)
    assert (counts["tests"], counts["passed"], counts["failures"], counts["skipped"]) == (3, 1, 1, 1)
    assert counts["failed_cases"] == ["tests.test_a::test_x"]
    assert gpu_check.junit_counts(tmp_path / "absent.xml") is None


def test_bench_kernels_keeps_the_rows_measured_before_an_interrupt(tmp_path, monkeypatch):
    bench = _load("bench_kernels_interrupted", ROOT / "benchmarks" / "bench_kernels.py")
    calls = []

    def measure(op, dtype, n, *rest):
        calls.append(op)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [{"op": op, "variant": "eager", "seconds": 1.0}]

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "copy_bandwidth", lambda device: 1e9)
    out = tmp_path / "k.json"
    with pytest.raises(SystemExit) as stop:
        bench.main(["--device", "cpu", "--sizes", "2", "--dtypes", "float32", "--out", str(out)])
    assert stop.value.code == 130
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and [r["op"] for r in saved["rows"]] == ["policy_loss"]


def test_async_value_checks_raise_at_the_assert_not_with_a_host_read():
    v, x0, eps = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([0.5, float("nan")])
    with pytest.raises(ValueError, match="t"):
        ek.elbo(v, x0, eps, t, backend="torch")
    with ek.async_value_checks(), pytest.raises(RuntimeError, match="t"):
        ek.elbo(v, x0, eps, t, backend="torch")  # on CPU tensors the device-side assert fires at once
    with pytest.raises(ValueError):  # the context is left: eager checks again
        ek.elbo(v, x0, eps, t, backend="torch")


def test_build_cpp_zero_disables_the_extension_without_building():
    code = "import elbo_kernels as ek; s = ek.available_backends(); print(bool(s['cpu']), s['cpu'].reason)"
    env = dict(os.environ, ELBO_KERNELS_BUILD_CPP="0", TORCH_EXTENSIONS_DIR="/nonexistent/never-built")
    env.pop("ELBO_KERNELS_REQUIRE_CPP", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False disabled by ELBO_KERNELS_BUILD_CPP=0"


def test_autotune_switch_leaves_one_config_on_a_gpu(monkeypatch):
    pytest.importorskip("triton")
    from elbo_kernels.ops._triton import _common

    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.delenv(_common.AUTOTUNE_ENV, raising=False)
    assert len(_common.autotune_configs()) == len(_common._GPU_BLOCKS)
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "0")
    assert [c.kwargs["BLOCK"] for c in _common.autotune_configs()] == [_common._GPU_BLOCKS[0][0]]


def test_test_selection_by_environment_names_what_is_unknown():
    code = "import sys; sys.path.insert(0, 'tests'); import ops_cases; print(ops_cases.DTYPES, ops_cases.SELECTED_BACKENDS)"
    env = dict(os.environ, ELBO_KERNELS_TEST_DTYPES="float32,bfloat16", ELBO_KERNELS_TEST_BACKENDS="triton")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "[torch.float32, torch.bfloat16] ['triton']"
    env["ELBO_KERNELS_TEST_DTYPES"] = "float33"
    bad = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "ELBO_KERNELS_TEST_DTYPES: unknown ['float33']" in bad.stderr


def test_with_the_extension_disabled_the_triton_cases_still_run():
    """A failed build no longer takes the Triton cases down with it (it was 2 collection errors, 0 tests)."""
    env = dict(os.environ, ELBO_KERNELS_BUILD_CPP="0", ELBO_KERNELS_TEST_DTYPES="float32",
               TRITON_INTERPRET="1")
    env.pop("ELBO_KERNELS_REQUIRE_CPP", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/test_op_noise.py"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "error" not in summary and "failed" not in summary, summary
    assert "disabled by ELBO_KERNELS_BUILD_CPP=0" in proc.stdout  # the cpu cases say why they skip
