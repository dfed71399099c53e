"""Test configuration.

TRITON_INTERPRET must be set before any Triton kernel is decorated, so it is set
here, at the top of conftest, before elbo_kernels is imported by any test. On a
machine with a GPU, export TRITON_INTERPRET=0 to run the Triton kernels for real.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
