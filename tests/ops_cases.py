"""Shared by the per-op backend tests (tests/test_op_*.py): the backends, inputs, tolerance rule,
opcheck and torch.compile helpers.

Every fused backend of the backend table (elbo_kernels/ops/_backends.py) is a parameter:
  cpu     the C++ extension (built on first use, about a minute, then cached); skipped only when the
          build genuinely fails and ELBO_KERNELS_REQUIRE_CPP is not set (with it set, collection fails);
  cuda    the extension's CUDA kernels, where a GPU and the CUDA build exist;
  triton  the Triton kernels, in the interpreter on CPU tensors (TRITON_INTERPRET=1, set by
          conftest) or on a GPU with TRITON_INTERPRET=0.
The torch backend is the reference every test compares with.

Tolerances (flash-attention's rule): for each dtype, the backend's max error against a float64
evaluation of the same (already rounded) inputs may be at most twice the error of the torch
reference run in that dtype, plus a floor of 8 float32 (float64) ulps of the result's scale.
"""

from __future__ import annotations

import os

import pytest
import torch

from elbo_kernels.ops import _backends
from elbo_kernels.ops._base import accumulation_dtype
from elbo_kernels.ops._triton import interpreting
from elbo_kernels.ops.noise import NoiseSeed

# The device check (scripts/gpu_check.py) narrows the grid to what a GPU run must show in its
# time budget: ELBO_KERNELS_TEST_DTYPES=float32,bfloat16 and ELBO_KERNELS_TEST_BACKENDS=triton,cuda.
# Unset, every dtype and backend is a parameter.


def _selected(env: str, names):
    wanted = os.environ.get(env, "").replace(" ", "")
    if not wanted:
        return list(names)
    unknown = set(wanted.split(",")) - {str(n).removeprefix("torch.") for n in names}
    if unknown:
        raise ValueError(f"{env}: unknown {sorted(unknown)}; choose from {[str(n) for n in names]}")
    return [n for n in names if str(n).removeprefix("torch.") in wanted.split(",")]


DTYPES = _selected("ELBO_KERNELS_TEST_DTYPES", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
LOW = [d for d in (torch.bfloat16, torch.float16) if d in DTYPES]
FUSED_BACKENDS = ("cpu", "cuda", "triton")
SELECTED_BACKENDS = _selected("ELBO_KERNELS_TEST_BACKENDS", FUSED_BACKENDS)


def device_of(backend: str) -> str:
    """Where a backend's test tensors live."""
    if backend == "triton":
        return "cpu" if interpreting() else "cuda"
    return backend


def _why_not(backend: str) -> str:
    """'' when the backend runs here; else why its tests are skipped."""
    status = _backends.BACKEND_TABLE[backend].status()  # cpu: raises under ELBO_KERNELS_REQUIRE_CPP=1
    if not status:
        return f"backend {backend!r} not usable here: {status.reason}"
    if device_of(backend) == "cuda" and not torch.cuda.is_available():
        return f"backend {backend!r} needs a CUDA device"
    return ""


def backend_params(*backends: str):
    """pytest params for ``backends`` (default: every fused one), skipped where one cannot run."""
    params = []
    for name in [b for b in backends or FUSED_BACKENDS if b in SELECTED_BACKENDS]:
        reason = _why_not(name)
        params.append(pytest.param(name, id=name, marks=pytest.mark.skipif(bool(reason), reason=reason)))
    return params


BACKENDS = backend_params()


def op(name: str, backend: str):
    """The registered op behind ``name`` on ``backend`` (torch.ops.elbo_kernels.<name>[_triton])."""
    return _backends.fused_op(name, backend)


def randn(*shape, dtype=torch.float32, device="cpu"):
    """Normal values drawn in float64 (the same values for every dtype and device), then cast."""
    return torch.randn(*shape, dtype=torch.float64).to(dtype).to(device)


def double(x):
    return x if x is None or isinstance(x, NoiseSeed) else x.double()


def sums_inputs(n, b, latent, dtype, *, old=True, ref=True, device="cpu"):
    """(v, x0, eps, v_old, v_ref) for residual sums: N = n draws of b samples."""
    v = randn(n, *latent, dtype=dtype, device=device)
    x0 = randn(b, *latent, dtype=dtype, device=device)
    eps = randn(n, *latent, dtype=dtype, device=device)
    v_old = randn(n, *latent, dtype=dtype, device=device) if old else None
    v_ref = randn(n, *latent, dtype=dtype, device=device) if ref else None
    return v, x0, eps, v_old, v_ref


def sde_inputs(n, latent, dtype, device="cpu"):
    """(v, x, x_prev, coef) for the SDE step; coef [N, 4] = (a_x, a_v, w, c) in the accumulation dtype."""
    v, x, x_prev = (randn(n, *latent, dtype=dtype, device=device) for _ in range(3))
    coef = torch.stack(
        [1 + 0.1 * torch.rand(n), -0.1 * torch.rand(n), 1 + torch.rand(n), torch.randn(n)], dim=1
    ).to(accumulation_dtype(dtype)).to(device)
    return v, x, x_prev, coef


def backend_noise(backend, shape, seed, offset, dtype, device):
    """eps of ``shape`` from the backend's own generator, in the accumulation dtype of ``dtype``."""
    like = torch.empty((), dtype=accumulation_dtype(dtype), device=device).expand(shape)
    return op("generate_noise", backend)(like, seed, offset)


def assert_within_flash_rule(backend_out, torch_low, reference64, name="", unit=None):
    """max|backend - ref64| <= 2 max|torch_low - ref64| + 8 unit * max(|ref64|, 1).

    ``unit`` defaults to the ulp of 1 in the backend's output dtype (float32 for
    16-bit outputs, whose rounding the torch error already measures).
    """
    ref = reference64.double().cpu()
    backend_err = (backend_out.double().cpu() - ref).abs().max().item()
    torch_err = (torch_low.double().cpu() - ref).abs().max().item()
    if unit is None:
        unit = 2.0**-52 if backend_out.dtype == torch.float64 else 2.0**-23
    floor = 8 * unit * max(ref.abs().max().item(), 1.0)
    assert backend_err <= 2 * torch_err + floor, f"{name}: backend error {backend_err:g}, torch {torch_err:g}"


def opcheck(registered_op, args) -> None:
    """torch.library.opcheck of the op's default overload: schema, fake kernel, autograd registration."""
    torch.library.opcheck(registered_op.default, args)


def assert_compiled_matches_eager(loss, v, compile_backend) -> None:
    """``loss(v)`` under torch.compile(fullgraph=True) equals eager, value and gradient in v."""
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=compile_backend)
    v1 = v.clone().requires_grad_(True)
    v2 = v.clone().requires_grad_(True)
    out_compiled, out_eager = compiled(v1), loss(v2)
    out_compiled.backward()
    out_eager.backward()
    torch.testing.assert_close(out_compiled, out_eager)
    torch.testing.assert_close(v1.grad, v2.grad)
