"""What only the Triton backend has: its status, lazy import of triton, and the launch plumbing of
elbo_kernels/ops/_triton/ (device checks, the device guard, pinned reduction configs). The ops'
results on every backend are tests/test_op_*.py's."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from elbo_kernels.ops import _triton  # noqa: E402

if not _triton.status():
    pytest.skip(_triton.status().reason, allow_module_level=True)

from elbo_kernels.ops._triton import _common  # noqa: E402
from elbo_kernels.ops._triton import noise as _tri_noise  # noqa: E402
from elbo_kernels.ops._triton import noising as _tri_noising  # noqa: E402
from elbo_kernels.ops._triton import residual_sums as _tri_sums  # noqa: E402
from elbo_kernels.ops._triton import sde_step as _tri_sde  # noqa: E402
from ops_cases import DTYPES, device_of, randn  # noqa: E402

DEVICE = device_of("triton")


def test_importing_elbo_kernels_does_not_import_triton():
    code = (
        "import sys, elbo_kernels, elbo_kernels.backends, elbo_kernels.ops.residual_sums, "
        "elbo_kernels.ops.noising, elbo_kernels.ops.sde_step, elbo_kernels.ops.noise, elbo_kernels.ops._triton\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_status_names_triton_version_and_mode():
    import triton

    status = _triton.status()
    assert status.available
    assert triton.__version__ in status.reason
    assert ("interpreter" in status.reason) == _triton.interpreting()


def test_launchers_name_the_argument_on_another_device():
    x0, t = randn(2, 3, 5, device=DEVICE), torch.rand(4, device=DEVICE)
    with pytest.raises(ValueError, match="noise is on meta"):
        # The launcher itself (the custom op would route a meta input to its fake kernel).
        _tri_noising.noising_forward(x0, t, torch.empty(4, 3, 5, device="meta"), 2, 0, 0)
    v = randn(4, 3, 5, device=DEVICE)
    with pytest.raises(ValueError, match="v_ref is on meta"):
        _tri_sums.residual_sums_forward(v, x0, None, None, torch.empty_like(v, device="meta"), 0.0, 1, 2)


def test_device_guard_makes_the_tensors_cuda_device_current():
    """Triton launches on the current device: the guard switches to the tensors' one (cuda:1 here)."""

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    guard = _common.device_guard("op", v=OnSecondGpu(), x0=OnSecondGpu())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_reductions_run_one_pinned_config_and_elementwise_kernels_autotune():
    """Reduction bits follow BLOCK and num_warps, so those kernels are never autotuned (_common docstring)."""
    from triton.runtime.autotuner import Autotuner

    for kernel in (_tri_sums._residual_sums_fwd_kernel, _tri_sde._sde_step_fwd_kernel):
        assert not isinstance(kernel, Autotuner)
    for kernel in (_tri_sums._residual_sums_bwd_kernel, _tri_sde._sde_step_bwd_kernel, _tri_noise._generate_noise_kernel):
        assert isinstance(kernel, Autotuner)
    assert _tri_noise._generate_noise_kernel.keys == []  # tuned once per dtype, not per shape
    for dtype in DTYPES:
        assert set(_common.reduce_launch(dtype)) == {"BLOCK", "num_warps"}
