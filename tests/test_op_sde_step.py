"""The fused SDE step (elbo_kernels/ops/sde_step.py) on every fused backend, against its pure-torch
reference: forward, closed-form backward, autograd, opcheck. Helpers: tests/ops_cases.py."""

import pytest
import torch

from elbo_kernels.ops._base import accumulation_dtype
from elbo_kernels.ops.sde_step import sde_step_backward_reference, sde_step_op, sde_step_reference
from ops_cases import (
    BACKENDS,
    DTYPES,
    assert_within_flash_rule,
    backend_params,
    device_of,
    double,
    op,
    opcheck,
    randn,
    sde_inputs,
)

LATENTS = [(1,), (3, 5, 7), (4099,), (3, 97), (2, 4, 4)]


@pytest.mark.parametrize("with_grad_mean", [False, True])
@pytest.mark.parametrize("latent", LATENTS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_backward_match_reference(backend, dtype, latent, with_grad_mean):
    n, device = 3, device_of(backend)
    acc = accumulation_dtype(dtype)
    v, x, x_prev, coef = sde_inputs(n, latent, dtype, device)
    log_prob, mean = sde_step_op(v, x, x_prev, coef, backend=backend)
    assert log_prob.shape == (n,) and mean.shape == v.shape and log_prob.dtype == acc and mean.dtype == acc
    d64 = [t.double() for t in (v, x, x_prev, coef)]
    lp_truth, mean_truth = sde_step_reference(*d64)
    lp_torch, mean_torch = sde_step_reference(v, x, x_prev, coef)
    assert_within_flash_rule(log_prob, lp_torch, lp_truth, "log_prob")
    assert_within_flash_rule(mean, mean_torch, mean_truth, "prev_mean")
    # Compiled without FMA contraction: prev_mean rounds exactly as torch's a_x * x + a_v * v.
    assert torch.equal(mean, mean_torch)

    g_lp = randn(n, dtype=acc, device=device)
    g_mean = randn(n, *latent, dtype=acc, device=device) if with_grad_mean else None
    grad = op("sde_step_backward", backend)(g_lp, g_mean, v, x, x_prev, coef)
    assert grad.dtype == dtype and grad.shape == v.shape
    grad_truth = sde_step_backward_reference(g_lp.double(), double(g_mean), *d64)
    grad_torch = sde_step_backward_reference(g_lp, g_mean, v, x, x_prev, coef)
    assert_within_flash_rule(grad, grad_torch, grad_truth, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_non_contiguous_inputs_and_is_deterministic(backend):
    device = device_of(backend)
    sde_step = op("sde_step", backend)
    v = randn(7, 4, device=device).t()
    x = randn(4, 14, device=device)[:, ::2]
    x_prev = randn(4, 7, 2, device=device)[..., 1]
    coef = sde_inputs(4, (7,), torch.float32, device)[3].t().contiguous().t()
    first = sde_step(v, x, x_prev, coef)
    lp_ref, mean_ref = sde_step_reference(v, x, x_prev, coef)
    torch.testing.assert_close(first[0], lp_ref)
    torch.testing.assert_close(first[1], mean_ref)
    second = sde_step(v, x, x_prev, coef)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    v, x, x_prev, coef = sde_inputs(3, (4, 5), torch.float64, device_of(backend))
    v.requires_grad_(True)
    sde_step = op("sde_step", backend)
    assert torch.autograd.gradcheck(lambda v: sde_step(v, x, x_prev, coef), (v,))
    # Only log_prob used downstream: the grad of prev_mean arrives as None.
    assert torch.autograd.gradcheck(lambda v: sde_step(v, x, x_prev, coef)[0], (v,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    device = device_of(backend)
    v, x, x_prev, coef = sde_inputs(3, (2, 5), torch.float32, device)
    v.requires_grad_(True)
    opcheck(op("sde_step", backend), (v, x, x_prev, coef))
    opcheck(op("sde_step_backward", backend), (randn(3, device=device), None, v.detach(), x, x_prev, coef))


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_several_chunks_per_row_match_reference_and_are_deterministic(monkeypatch, backend):
    from elbo_kernels.ops._triton import _common

    monkeypatch.setattr(_common, "CHUNK_OVERRIDE", _common.max_block())
    device = device_of(backend)
    d = 2 * _common.max_block() + 5
    v = randn(6, d, device=device)[::2]
    x = randn(d, 3, device=device).t()
    x_prev = randn(3, d, device=device)
    coef = torch.randn(4, 3, device=device).t()
    sde_step = op("sde_step", backend)
    first = sde_step(v, x, x_prev, coef)
    expected = sde_step_reference(v.contiguous(), x.contiguous(), x_prev, coef.contiguous())
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    second = sde_step(v, x, x_prev, coef)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
