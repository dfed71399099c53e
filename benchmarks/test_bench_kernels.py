"""pytest-benchmark suite for the fused ops (not part of the test run; timings are not assertions).

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only
"""

import pytest
import torch

import elbo_kernels as ek
from bench_kernels import OPS, forward_backward, make_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = ["cpu"] if DEVICE == "cpu" else ["triton", "cuda"]
VARIANTS = ["torch"] + [b for b in FUSED if ek.available_backends()[b]]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("backend", VARIANTS)
@pytest.mark.parametrize("n", [8, 32])
def test_forward_backward(benchmark, op, backend, n):
    inputs = make_inputs(n, torch.float32, DEVICE)
    step = forward_backward(OPS[op][0](inputs, backend), inputs["v"])
    benchmark.group = f"{op} N={n}"
    benchmark(step)
