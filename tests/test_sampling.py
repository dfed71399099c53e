"""Specification of the flow samplers (elbo_kernels.sampling)."""

import math

import pytest
import torch

from elbo_kernels.sampling import (
    SDETrajectory,
    apply_guidance,
    cfg_velocity,
    ode_sample,
    sde_sample,
    timestep_grid,
)

MU, SCALE = 0.7, 0.5
"""Toy data x0 ~ N(MU, SCALE^2) per element: the flow's velocity field and ODE solution are closed form."""


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[eps - x0 | x_t = x] for x0 ~ N(MU, SCALE^2): marginal mean (1-t) MU, variance (1-t)^2 SCALE^2 + t^2."""
    t = t.to(torch.float64).reshape(-1, *([1] * (x.dim() - 1)))
    mean = (1 - t) * MU
    var = (1 - t) ** 2 * SCALE**2 + t**2
    dvar = -2 * (1 - t) * SCALE**2 + 2 * t
    return (-MU + dvar / (2 * var) * (x - mean)).to(x.dtype)


def exact_x0(x1: torch.Tensor) -> torch.Tensor:
    """The ODE maps x1 ~ N(0, 1) at t = 1 to MU + SCALE * x1 at t = 0."""
    return MU + SCALE * x1


def ode_error(method: str, num_steps: int) -> float:
    x1 = torch.randn(64, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = timestep_grid(num_steps).to(torch.float64)
    return float((ode_sample(gaussian_velocity, x1, sigmas, method=method) - exact_x0(x1)).abs().max())


# ----------------------------------------------------------------------------- grid


def test_timestep_grid_runs_from_one_to_zero_strictly_decreasing():
    sigmas = timestep_grid(10)
    assert sigmas.shape == (11,) and sigmas.dtype == torch.float32
    assert sigmas[0] == 1 and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    torch.testing.assert_close(sigmas, torch.linspace(1, 0, 11))


def test_timestep_grid_shift_spends_more_steps_at_high_noise():
    plain, shifted = timestep_grid(10), timestep_grid(10, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0
    assert bool((shifted[1:-1] > plain[1:-1]).all())
    torch.testing.assert_close(shifted[5], torch.tensor(0.75))  # 3 * 0.5 / (1 + 2 * 0.5)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_timestep_grid_rejects_bad_num_steps(bad):
    with pytest.raises(ValueError, match="num_steps"):
        timestep_grid(bad)


# ----------------------------------------------------------------------------- ODE


@pytest.mark.parametrize("method", ["euler", "dpm2"])
def test_ode_error_shrinks_with_more_steps(method):
    errors = [ode_error(method, n) for n in (5, 10, 20, 40)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors


def test_euler_is_first_order_and_dpm2_second_order():
    euler_ratio = ode_error("euler", 20) / ode_error("euler", 40)
    dpm2_ratio = ode_error("dpm2", 20) / ode_error("dpm2", 40)
    assert 1.6 < euler_ratio < 2.5, euler_ratio
    assert dpm2_ratio > 3.0, dpm2_ratio


@pytest.mark.parametrize("num_steps", [2, 5, 10, 20])
def test_dpm2_is_more_accurate_than_euler_at_equal_steps(num_steps):
    assert ode_error("dpm2", num_steps) < ode_error("euler", num_steps)


def test_ode_is_accurate_on_the_gaussian_flow():
    assert ode_error("dpm2", 40) < 1e-3
    assert ode_error("euler", 200) < 2e-2


def test_ode_one_euler_step_is_x1_minus_v():
    x1 = torch.randn(4, 2, 3)
    out = ode_sample(lambda x, t: 2 * x + t.reshape(-1, 1, 1), x1, timestep_grid(1))
    torch.testing.assert_close(out, x1 - (2 * x1 + 1))


def test_ode_passes_per_row_times_and_counts_velocity_calls():
    seen = []

    def velocity(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    ode_sample(velocity, torch.randn(3, 1, 8, 8), timestep_grid(10), method="euler")
    assert len(seen) == 10 and seen[0] == 1.0
    seen.clear()
    ode_sample(velocity, torch.randn(3, 1, 8, 8), timestep_grid(10), method="dpm2")
    assert len(seen) == 19  # two calls per step, Euler on the last step to sigma = 0
    assert seen[1] == pytest.approx(math.sqrt(1.0 * 0.9), rel=1e-6)  # log-sigma midpoint


def test_ode_rejects_unknown_method_and_increasing_grid():
    with pytest.raises(ValueError, match="method"):
        ode_sample(gaussian_velocity, torch.randn(2, 3), timestep_grid(4), method="rk4")
    with pytest.raises(ValueError, match="decreasing"):
        ode_sample(gaussian_velocity, torch.randn(2, 3), torch.linspace(0, 1, 5))


def test_ode_rejects_velocity_of_wrong_shape():
    with pytest.raises(ValueError, match="velocity_fn returned shape"):
        ode_sample(lambda x, t: x[:, :1], torch.randn(2, 3), timestep_grid(2))


# ----------------------------------------------------------------------------- SDE


def flowgrpo_sde_step(v, x, sigma, sigma_prev, sigma_max, noise_level):
    """The SDE step of docs/design.md section 2, written out independently of the library: (mean, step std)."""
    sigma_for_ratio = sigma_max if sigma == 1 else sigma
    std = noise_level * math.sqrt(sigma / (1 - sigma_for_ratio))
    dt = sigma_prev - sigma
    mean = x * (1 + std**2 * dt / (2 * sigma)) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std * math.sqrt(-dt)


def rollout(sde_type="sde", seed=0, num_steps=6, n=256, noise_level=0.7):
    x1 = torch.randn(n, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(100))
    return sde_sample(
        gaussian_velocity, x1, timestep_grid(num_steps).double(), noise_level=noise_level,
        sde_type=sde_type, generator=torch.Generator().manual_seed(seed), backend="torch",
    )


def test_sde_trajectory_shapes_and_endpoints():
    x1 = torch.randn(5, 1, 8, 8)
    traj = sde_sample(
        gaussian_velocity, x1, timestep_grid(10), generator=torch.Generator().manual_seed(0), backend="torch"
    )
    assert isinstance(traj, SDETrajectory)
    assert traj.latents.shape == (5, 11, 1, 8, 8)
    assert traj.log_probs.shape == (5, 10) and traj.log_probs.dtype == torch.float32
    assert traj.sigmas.shape == (11,)
    torch.testing.assert_close(traj.latents[:, 0], x1)
    torch.testing.assert_close(traj.latents[:, -1], traj.final)
    assert bool(torch.isfinite(traj.log_probs).all())


def test_sde_log_probs_are_the_gaussian_density_of_the_step_taken():
    traj = rollout("sde")
    sigmas = [float(s) for s in traj.sigmas]
    for j in range(len(sigmas) - 1):
        x, x_prev = traj.latents[:, j], traj.latents[:, j + 1]
        v = gaussian_velocity(x, torch.full((x.shape[0],), sigmas[j], dtype=x.dtype))
        mean, step_std = flowgrpo_sde_step(v, x, sigmas[j], sigmas[j + 1], sigmas[1], 0.7)
        density = -((x_prev - mean) ** 2) / (2 * step_std**2) - math.log(step_std) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(traj.log_probs[:, j].double(), density.flatten(1).mean(1), rtol=1e-5, atol=1e-5)
        # and the step really was a draw from that Gaussian: standardised residuals ~ N(0, 1)
        z = (x_prev - mean) / step_std
        assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def test_cps_log_probs_follow_flowgrpo_without_constants():
    traj = rollout("cps")
    sigmas = [float(s) for s in traj.sigmas]
    for j in range(len(sigmas) - 1):
        s, sp = sigmas[j], sigmas[j + 1]
        x, x_prev = traj.latents[:, j], traj.latents[:, j + 1]
        v = gaussian_velocity(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        std = sp * math.sin(0.7 * math.pi / 2)
        mean = (x - s * v) * (1 - sp) + (x + (1 - s) * v) * math.sqrt(sp**2 - std**2)
        torch.testing.assert_close(
            traj.log_probs[:, j].double(), -((x_prev - mean) ** 2).flatten(1).mean(1), rtol=1e-5, atol=1e-6
        )
        if std > 0:
            assert abs(float(((x_prev - mean) / std).std()) - 1) < 0.05


def test_sde_is_deterministic_under_a_generator_and_seeds_differ():
    a, b, c = rollout(seed=1, n=8), rollout(seed=1, n=8), rollout(seed=2, n=8)
    torch.testing.assert_close(a.latents, b.latents)
    torch.testing.assert_close(a.log_probs, b.log_probs)
    assert not torch.allclose(a.final, c.final)


def test_sde_with_small_noise_lands_near_the_ode_solution():
    x1 = torch.randn(16, 1, 4, 4, dtype=torch.float64)
    sigmas = timestep_grid(50).double()
    traj = sde_sample(
        gaussian_velocity, x1, sigmas, noise_level=1e-3, generator=torch.Generator().manual_seed(0), backend="torch"
    )
    ode = ode_sample(gaussian_velocity, x1, sigmas)
    assert float((traj.final - ode).abs().max()) < 1e-2


def test_sde_rejects_unknown_type():
    with pytest.raises(ValueError, match="sde_type"):
        sde_sample(gaussian_velocity, torch.randn(2, 3), timestep_grid(3), sde_type="ddim", backend="torch")


# ----------------------------------------------------------------------------- CFG


def test_cfg_with_scale_one_is_the_conditional_velocity_with_one_forward():
    calls = []

    def cond(x, t):
        calls.append("cond")
        return x + 1

    def uncond(x, t):
        calls.append("uncond")
        return x - 1

    guided = cfg_velocity(cond, uncond, 1.0)
    x, t = torch.randn(3, 2), torch.ones(3)
    torch.testing.assert_close(guided(x, t), cond(x, t))
    assert "uncond" not in calls


def test_cfg_combines_as_uncond_plus_scale_times_difference():
    x, t = torch.randn(3, 2), torch.ones(3)
    guided = cfg_velocity(lambda x, t: 2 * x, lambda x, t: x, 4.5)
    torch.testing.assert_close(guided(x, t), x + 4.5 * (2 * x - x))
    torch.testing.assert_close(apply_guidance(2 * x, x, 0.0), x)


def test_cfg_gradient_flows_through_the_conditional_branch_only():
    """FlowGRPO's convention: d(guided)/d(theta) = scale * d(v_cond)/d(theta), the unconditional branch held fixed."""
    theta = torch.tensor([0.7, -1.3], requires_grad=True)
    x, t = torch.randn(3, 2), torch.ones(3)
    guided = cfg_velocity(lambda x, t: theta * x, lambda x, t: theta.square() * x, 4.5)
    (grad,) = torch.autograd.grad(guided(x, t).sum(), theta)
    # by hand: guided = u + s (c - u), u held fixed => d/dtheta = s * dc/dtheta = s * sum_rows(x)
    torch.testing.assert_close(grad, 4.5 * x.sum(0))


def test_sde_rollout_at_noise_level_zero_takes_euler_steps():
    """noise_level 0 is FlowGRPO's deterministic rollout: x_prev = x + dt v; "sde" log-probs are NaN as in FlowGRPO."""
    sigmas = timestep_grid(4, shift=3.0)
    x1 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))

    def velocity(x, t):
        return x * t.reshape(-1, 1, 1) - 0.5

    for sde_type in ("sde", "cps"):
        trajectory = sde_sample(velocity, x1, sigmas, noise_level=0.0, sde_type=sde_type, backend="torch")
        x = x1
        for j in range(4):
            x = x + (sigmas[j + 1] - sigmas[j]) * velocity(x, sigmas[j].expand(2))
            torch.testing.assert_close(trajectory.latents[:, j + 1], x, rtol=1e-6, atol=1e-6)
        if sde_type == "sde":
            assert bool(trajectory.log_probs.isnan().all())
        else:  # cps keeps -mean (x_prev - prev_mean)^2, which is 0 on the step taken
            torch.testing.assert_close(trajectory.log_probs, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="noise_level must be finite and >= 0"):
        sde_sample(velocity, x1, sigmas, noise_level=-0.1)
