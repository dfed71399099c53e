"""ek.sde_step_log_prob: FlowGRPO's SDE step (sde and cps) against its own formula."""

import pytest
import torch

import elbo_kernels as ek
from reference import flowgrpo_sde_step


def step_inputs(n=4, shape=(2, 3, 3), dtype=torch.float64, seed=0, sigma_one=False):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn((n,) + shape, generator=g, dtype=dtype)
    x = torch.randn((n,) + shape, generator=g, dtype=dtype)
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 0.7 + 0.25
    if sigma_one:
        sigma[0] = 1.0
    sigma_prev = sigma - 0.1
    x_prev = x + 0.3 * torch.randn((n,) + shape, generator=g, dtype=dtype)
    return v, x, x_prev, sigma, sigma_prev


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 3), (1, 2, 2, 3)])
def test_matches_flowgrpo_formula(sde_type, shape):
    v, x, x_prev, sigma, sigma_prev = step_inputs(shape=shape, sigma_one=True)
    log_prob, prev_mean, std = ek.sde_step_log_prob(
        v, x, x_prev, sigma, sigma_prev, noise_level=0.7, sde_type=sde_type, sigma_max=0.96, backend="torch"
    )
    ref_lp, ref_mean, ref_std = flowgrpo_sde_step(v, x, x_prev, sigma, sigma_prev, 0.7, sde_type, 0.96)
    torch.testing.assert_close(log_prob, ref_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prev_mean, ref_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(std, ref_std, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_gradient_matches_flowgrpo_formula(sde_type):
    v0, x, x_prev, sigma, sigma_prev = step_inputs()
    v1, v2 = v0.clone().requires_grad_(), v0.clone().requires_grad_()
    weights = torch.randn(v0.shape, dtype=torch.float64)
    lp, mean, _ = ek.sde_step_log_prob(v1, x, x_prev, sigma, sigma_prev, sde_type=sde_type, backend="torch")
    (lp.sum() + (mean * weights).sum()).backward()
    lp2, mean2, _ = flowgrpo_sde_step(v2, x, x_prev, sigma, sigma_prev, 0.7, sde_type, 0.0)
    (lp2.sum() + (mean2 * weights).sum()).backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-10, atol=1e-12)


def test_low_precision_inputs_are_computed_in_float32():
    v, x, x_prev, sigma, sigma_prev = step_inputs(dtype=torch.float32)
    lp32, mean32, _ = ek.sde_step_log_prob(v, x, x_prev, sigma, sigma_prev, backend="torch")
    lp16, mean16, _ = ek.sde_step_log_prob(
        v.bfloat16(), x.bfloat16(), x_prev.bfloat16(), sigma, sigma_prev, backend="torch"
    )
    assert lp16.dtype == torch.float32 and mean16.dtype == torch.float32
    ref, _, _ = ek.sde_step_log_prob(
        v.bfloat16().double(), x.bfloat16().double(), x_prev.bfloat16().double(), sigma, sigma_prev, backend="torch"
    )
    torch.testing.assert_close(lp16.double(), ref, rtol=1e-5, atol=1e-5)


def test_log_prob_is_the_density_of_the_step_taken():
    # Draw x_prev from the step's Gaussian; the average log-prob approaches -1/2 - log(std) - log sqrt(2 pi).
    v, x, _, sigma, sigma_prev = step_inputs(n=2, shape=(20000,))
    coef, _, step_std = ek.sde_step_coefficients(sigma, sigma_prev)
    mean = coef[:, 0, None] * x + coef[:, 1, None] * v
    x_prev = mean + step_std[:, None] * torch.randn_like(x)
    lp, _, _ = ek.sde_step_log_prob(v, x, x_prev, sigma, sigma_prev, backend="torch")
    expected = -0.5 - torch.log(step_std) - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    torch.testing.assert_close(lp, expected, atol=0.02, rtol=0)


def test_sigma_one_without_sigma_max_is_an_error():
    v, x, x_prev, sigma, sigma_prev = step_inputs(sigma_one=True)
    with pytest.raises(ValueError, match="sigma_max"):
        ek.sde_step_log_prob(v, x, x_prev, sigma, sigma_prev, backend="torch")


def test_sigma_prev_must_be_below_sigma():
    v, x, x_prev, sigma, _ = step_inputs()
    with pytest.raises(ValueError, match="sigma_prev"):
        ek.sde_step_log_prob(v, x, x_prev, sigma, sigma + 0.01, backend="torch")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_noise_level_zero_is_the_deterministic_euler_step(sde_type, backend):
    """FlowGRPO's evaluation step: prev_mean = x + dt v and std 0; "sde" has no density (NaN, as FlowGRPO's 0/0)."""
    v0, x, x_prev, sigma, sigma_prev = step_inputs(sigma_one=True)
    v = v0.clone().requires_grad_()
    log_prob, prev_mean, std = ek.sde_step_log_prob(v, x, x_prev, sigma, sigma_prev, noise_level=0.0,
                                                    sde_type=sde_type, sigma_max=0.96, backend=backend)
    dt = (sigma_prev - sigma).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(prev_mean, x + dt * v0, rtol=1e-12, atol=1e-12)
    assert float(std.abs().max()) == 0.0
    if sde_type == "sde":
        assert bool(log_prob.isnan().all())
    else:
        ref_lp, _, _ = flowgrpo_sde_step(v0, x, x_prev, sigma, sigma_prev, 0.0, sde_type, 0.96)
        torch.testing.assert_close(log_prob, ref_lp, rtol=1e-12, atol=1e-12)
    weights = torch.randn(v0.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((prev_mean * weights).sum(), v)
    torch.testing.assert_close(grad, dt.expand_as(weights) * weights, rtol=1e-12, atol=1e-12)
