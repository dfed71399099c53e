"""The C++ extension as a build and as registered ops: status, determinism, opcheck, torch.compile, errors.

Numerical agreement of each op with its reference, on every backend, is in tests/test_op_*.py, whose
helpers (tests/ops_cases.py) this reuses.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from elbo_kernels.ops import _cpp

from elbo_kernels.ops.residual_sums import COLUMN, NUM_SUMS
from ops_cases import randn as _randn
from ops_cases import sde_inputs as _sde_inputs
from ops_cases import sums_inputs as _sums_inputs

_STATUS = _cpp.cpu_status()  # raises under ELBO_KERNELS_REQUIRE_CPP=1 when the build fails
if not _STATUS:
    pytest.skip(f"C++ extension not built: {_STATUS.reason}", allow_module_level=True)
_cpp.load()
ops = torch.ops.elbo_kernels

# ---------------------------------------------------------------- build / status


def test_cpu_status_reports_what_was_built():
    status = _cpp.cpu_status()
    assert status.available
    assert "csrc" in status.reason and " s " in status.reason + " "


def test_cuda_status_says_why_when_not_built():
    status = _cpp.cuda_status()
    if not status:
        assert status.reason  # e.g. "torch ... is a CPU-only build" or "nvcc not found"


def test_load_is_idempotent():
    _cpp.load()
    _cpp.load()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("elbo_kernels::residual_sums", "CPU")


def test_failed_build_reports_compiler_output_and_raises_under_require_cpp(tmp_path):
    """A broken compiler: the status says why (compiler output tail), load() raises, and
    ELBO_KERNELS_REQUIRE_CPP=1 turns cpu_status() into an error too (CI never falls back silently)."""
    cxx = tmp_path / "broken-cxx"
    cxx.write_text(
        '#!/bin/sh\n[ "$1" = "--version" ] && exec c++ --version\necho "error: injected failure" >&2\nexit 1\n'
    )
    cxx.chmod(0o755)
    script = textwrap.dedent(
        """
        from elbo_kernels.ops import _cpp
        status = _cpp.cpu_status()
        assert not status and "injected failure" in status.reason, status
        try:
            _cpp.load()
        except RuntimeError as exc:
            assert "injected failure" in str(exc)
        else:
            raise AssertionError("load() did not raise")
        print("ok")
        """
    )
    env = dict(os.environ, CXX=str(cxx), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), ELBO_KERNELS_BUILD_CUDA="0")
    env.pop("ELBO_KERNELS_REQUIRE_CPP", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout + done.stderr
    env["ELBO_KERNELS_REQUIRE_CPP"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", "from elbo_kernels.ops import _cpp; _cpp.cpu_status()"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0 and "ELBO_KERNELS_REQUIRE_CPP" in done.stderr


# ---------------------------------------------------------------- determinism


def _big_inputs():
    return _sums_inputs(6, 3, (3, 4099), torch.float32)  # 7 chunks per row


def test_residual_sums_are_bitwise_deterministic_run_to_run():
    v, x0, eps, v_old, v_ref = _big_inputs()
    first = ops.residual_sums(v, x0, eps, v_old, v_ref, 0.5, 0, 0)
    for _ in range(3):
        assert torch.equal(first, ops.residual_sums(v, x0, eps, v_old, v_ref, 0.5, 0, 0))


@pytest.mark.parametrize("noise", ["tensor", "seed"])
def test_results_do_not_depend_on_the_thread_count(noise):
    v, x0, eps, v_old, v_ref = _big_inputs()
    eps = eps if noise == "tensor" else None
    grad_sums = _randn(6, NUM_SUMS)
    coef = _randn(6, 4)
    t = torch.rand(6)

    def run():
        return (
            ops.residual_sums(v, x0, eps, v_old, v_ref, 0.5, 3, 5),
            ops.residual_sums_backward(grad_sums, v, x0, eps, v_old, v_ref, 0.5, 3, 5),
            ops.noising(x0, t, eps, 2, 3, 5),
            ops.generate_noise(v, 3, 5),
            *ops.sde_step(v, x0.repeat_interleave(2, 0), v_old, coef),
        )

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run()
        torch.set_num_threads(max(2, threads))
        multi = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)


def test_results_do_not_depend_on_the_cpu_instruction_set(monkeypatch):
    """The baseline, AVX2 and AVX-512 copies of the kernels agree bitwise (same lane order, no FMA)."""
    v, x0, eps, v_old, v_ref = _big_inputs()
    grad_sums = _randn(6, NUM_SUMS)
    coef = _randn(6, 4).abs()
    results = []
    for isa in ("baseline", "avx2", "avx512"):
        monkeypatch.setenv("ELBO_KERNELS_CPU_ISA", isa)
        results.append(
            (
                ops.residual_sums(v, x0, None, v_old, v_ref, 0.5, 3, 5),
                ops.residual_sums_backward(grad_sums, v, x0, eps, v_old, v_ref, 0.5, 3, 5),
                ops.sde_step(v, eps, v_old, coef)[0],
            )
        )
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ---------------------------------------------------------------- opcheck / torch.compile


def test_residual_sums_opcheck():
    v, x0, eps, v_old, v_ref = _sums_inputs(4, 2, (3, 5), torch.float32)
    v.requires_grad_(True)
    torch.library.opcheck(ops.residual_sums.default, (v, x0, eps, v_old, v_ref, 0.3, 11, 12))
    torch.library.opcheck(ops.residual_sums.default, (v, x0, None, None, v_ref, 0.0, 11, 2**32))
    grad = _randn(4, NUM_SUMS)
    torch.library.opcheck(
        ops.residual_sums_backward.default, (grad, v.detach(), x0, None, v_old, v_ref, 0.3, 11, 12)
    )


def test_noising_and_generate_noise_opcheck():
    x0, t = _randn(2, 3, 5), torch.rand(4)
    torch.library.opcheck(ops.noising.default, (x0, t, _randn(4, 3, 5), 2, 0, 0))
    torch.library.opcheck(ops.noising.default, (x0, t, None, 2, 9, 2**32))
    torch.library.opcheck(ops.generate_noise.default, (_randn(3, 4), 4, 2**32 - 10))


def test_sde_step_opcheck():
    v, x, x_prev, coef = _sde_inputs(3, (4, 5), torch.float32)
    v.requires_grad_(True)
    torch.library.opcheck(ops.sde_step.default, (v, x, x_prev, coef))
    torch.library.opcheck(ops.sde_step_backward.default, (_randn(3), _randn(3, 4, 5), v.detach(), x, x_prev, coef))
    torch.library.opcheck(ops.sde_step_backward.default, (_randn(3), None, v.detach(), x, x_prev, coef))


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
@pytest.mark.slow
def test_ops_compile_fullgraph_and_match_eager(compile_backend):
    """Every op in one torch.compile(fullgraph=True) graph, forward and backward, on CPU."""
    torch._dynamo.reset()
    x0 = _randn(2, 3, 8)
    v_old, v_ref = _randn(4, 3, 8), _randn(4, 3, 8)
    t = torch.rand(4)
    coef = _sde_inputs(4, (3, 8), torch.float32)[3]

    def loss(v):
        x_t = ops.noising(x0, t, None, 2, 5, 7)
        eps = ops.generate_noise(v, 5, 7)
        sums = ops.residual_sums(v, x0, None, v_old, v_ref, 0.5, 5, 7)
        log_prob, mean = ops.sde_step(v, x_t, eps, coef)
        return sums[:, COLUMN["S2"]].sum() + 1e-2 * sums[:, COLUMN["K2"]].sum() + log_prob.sum() + mean.mean()

    v1 = _randn(4, 3, 8).requires_grad_(True)
    v2 = v1.detach().clone().requires_grad_(True)
    compiled = torch.compile(loss, fullgraph=True, backend=compile_backend)
    out_compiled, out_eager = compiled(v1), loss(v2)
    out_compiled.backward()
    out_eager.backward()
    torch.testing.assert_close(out_compiled, out_eager)
    torch.testing.assert_close(v1.grad, v2.grad)


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda v, x0, e: (v, x0[:, :3], e, None, None), r"x0 must be \[B, \*S\] with the latent shape S of v"),
        (
            lambda v, x0, e: (v, x0.repeat(2, 1)[:3], e, None, None),
            r"x0 has 3 rows but v has 4: N must be a multiple of B",
        ),
        (lambda v, x0, e: (v, x0.double(), e, None, None), r"x0 must have the dtype of v \(Float\)"),
        (lambda v, x0, e: (v, x0, e[:, :4], None, None), r"noise must have shape \[4, 5\]"),
        (lambda v, x0, e: (v, x0, e.half(), None, None), r"noise must have the dtype of v \(Float\) or Float"),
        (lambda v, x0, e: (v, x0, e, v[:2], None), r"v_old must have the shape of v \[4, 5\]"),
        (lambda v, x0, e: (v, x0, e, None, v.half()), r"v_ref must have the dtype of v"),
        (lambda v, x0, e: (v.int(), x0, e, None, None), r"v must be float16, bfloat16, float32 or float64"),
    ],
)
def test_residual_sums_argument_errors_name_the_argument(make_args, message):
    v, x0, e = _randn(4, 5), _randn(2, 5), _randn(4, 5)
    with pytest.raises(RuntimeError, match=message):
        ops.residual_sums(*make_args(v, x0, e), 0.0, 0, 0)


def test_backward_and_other_ops_argument_errors_name_the_argument():
    v, x0, e = _randn(4, 5), _randn(2, 5), _randn(4, 5)
    with pytest.raises(RuntimeError, match=r"grad_sums must be \[N, 11\] = \[4, 11\]"):
        ops.residual_sums_backward(_randn(4, 10), v, x0, e, None, None, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match=r"offset must be >= 0"):
        ops.residual_sums(v, x0, None, None, None, 0.0, 0, -1)
    with pytest.raises(RuntimeError, match=r"nft_beta must be finite"):
        ops.residual_sums(v, x0, e, v, None, float("nan"), 0, 0)
    with pytest.raises(RuntimeError, match=r"t must be \[N\] = \[4\]"):
        ops.noising(x0, torch.rand(3), None, 2, 0, 0)
    with pytest.raises(RuntimeError, match=r"draws_per_sample must be >= 1"):
        ops.noising(x0, torch.rand(2), None, 0, 0, 0)
    with pytest.raises(RuntimeError, match=r"coef must be \[N, 4\] = \[4, 4\]"):
        ops.sde_step(v, v, v, _randn(4, 3))
    with pytest.raises(RuntimeError, match=r"x_prev must have the shape of v"):
        ops.sde_step(v, v, v[:, :2], _randn(4, 4))
    with pytest.raises(RuntimeError, match=r"grad_log_prob must be \[N\] = \[4\]"):
        ops.sde_step_backward(_randn(5), None, v, v, v, _randn(4, 4))
    with pytest.raises(RuntimeError, match=r"grad_prev_mean must have the shape of v"):
        ops.sde_step_backward(_randn(4), _randn(4, 4), v, v, v, _randn(4, 4))


def test_empty_batch_gives_empty_outputs():
    v, x0 = torch.empty(0, 3), torch.empty(1, 3)
    assert ops.residual_sums(v, x0, None, None, None, 0.0, 0, 0).shape == (0, NUM_SUMS)
    assert ops.generate_noise(v, 0, 0).shape == (0, 3)


# ---------------------------------------------------------------- CUDA toolkit discovery and build failures


def _fake_toolkit(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so").write_text("")
    return root


def test_cuda_home_follows_an_nvcc_wrapper_script_to_its_toolkit(tmp_path, monkeypatch):
    """An nvcc on PATH that is a wrapper outside the toolkit (torch's guess then fails with -lcudart)."""
    toolkit = _fake_toolkit(tmp_path / "cuda-13.0")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    nvcc = wrappers / "nvcc"
    nvcc.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    nvcc.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrappers))
    home, where = _cpp.cuda_home()
    assert home == str(toolkit) and str(nvcc) in where


def test_cuda_home_takes_the_environment_variable_as_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "somewhere"))
    assert _cpp.cuda_home() == (str(tmp_path / "somewhere"), "$CUDA_HOME")


@pytest.mark.parametrize("output,fix", [
    ("/usr/bin/ld: cannot find -lcudart: No such file or directory", "set CUDA_HOME"),
    ("IndexError: list index out of range", "TORCH_CUDA_ARCH_LIST"),
    ("nvcc fatal   : Unsupported gpu architecture 'compute_120'", "TORCH_CUDA_ARCH_LIST"),
])
def test_cuda_build_failures_are_explained_with_their_fix(output, fix):
    assert fix in _cpp.explain_cuda_build_failure(output, "/usr/local")


def test_cuda_build_env_defaults_the_arch_list_without_a_gpu_and_restores_it(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with _cpp._cuda_build_env() as env:
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
        assert any("TORCH_CUDA_ARCH_LIST" in note for note in env.notes)
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ
