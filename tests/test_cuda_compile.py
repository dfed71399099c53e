"""Compile-only check of the CUDA kernels: nvcc -c csrc/cuda_kernels.cu against torch's headers.

No GPU and no CUDA build of torch are needed; nothing is linked or run. It takes
about 45 s on two cores, and CI already runs the same check through
scripts/compile_cuda.sh, so here it is opt-in: set ELBO_KERNELS_TEST_CUDA_COMPILE=1.
"""

import os

import pytest

from elbo_kernels.ops import _cpp

pytestmark = pytest.mark.skipif(
    os.environ.get("ELBO_KERNELS_TEST_CUDA_COMPILE") != "1",
    reason="opt-in (ELBO_KERNELS_TEST_CUDA_COMPILE=1); CI runs scripts/compile_cuda.sh instead",
)


def test_cuda_kernels_compile_with_nvcc(tmp_path):
    if _cpp._nvcc() is None:
        pytest.skip("nvcc not found")
    out = _cpp.compile_cuda_only(tmp_path / "cuda_kernels.o")
    assert out.is_file() and out.stat().st_size > 0


def test_compile_cuda_only_reports_a_missing_nvcc_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="nvcc"):
        _cpp.compile_cuda_only(tmp_path / "x.o", nvcc=str(tmp_path / "no-such-nvcc"))
