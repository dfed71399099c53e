"""ek.elbo: the weightings against the naive reference, closed forms, shapes, gradients."""

import math

import pytest
import torch

import elbo_kernels as ek
from reference import central_difference_gradient, naive_elbo

WEIGHTINGS = list(ek.WEIGHTINGS)


def draws(n=6, shape=(2, 3, 5), b=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = b or n
    v = torch.randn((n,) + shape, generator=g, dtype=dtype)
    x0 = torch.randn((b,) + shape, generator=g, dtype=dtype)
    eps = torch.randn((n,) + shape, generator=g, dtype=dtype)
    t = torch.rand(n, generator=g, dtype=dtype) * 0.98 + 0.02
    return v, x0, eps, t


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_elbo_matches_naive_reference(weighting):
    v, x0, eps, t = draws()
    got = ek.elbo(v, x0, eps, t, weighting=weighting, backend="torch")
    torch.testing.assert_close(got, naive_elbo(v, x0, eps, t, weighting), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_elbo_gradient_matches_naive_reference(weighting):
    v, x0, eps, t = draws()
    v1 = v.clone().requires_grad_()
    v2 = v.clone().requires_grad_()
    ek.elbo(v1, x0, eps, t, weighting=weighting, backend="torch").sum().backward()
    naive_elbo(v2, x0, eps, t, weighting).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_elbo_gradient_equals_finite_differences_with_stop_gradients_held(weighting):
    # The adaptive weight is a stop-gradient: finite differences must hold it at its value at v0.
    v0, x0, eps, t = draws(n=3, shape=(4,))
    v = v0.clone().requires_grad_()
    weights = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    (ek.elbo(v, x0, eps, t, weighting=weighting, backend="torch") * weights).sum().backward()
    numeric = central_difference_gradient(
        lambda w: (naive_elbo(w, x0, eps, t, weighting, v_sg=v0) * weights).sum(), v0
    )
    torch.testing.assert_close(v.grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("weighting", ["simple", "t_squared", "t_linear", "path_kl", "ghuber"])
def test_elbo_gradcheck_without_stop_gradients(weighting):
    v, x0, eps, t = draws(n=3, shape=(4,))
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: ek.elbo(v, x0, eps, t, weighting=weighting, backend="torch"), (v,))


def test_x0_broadcast_over_k_equals_repeated_x0():
    v, x0, eps, t = draws(n=6, b=2)
    repeated = x0.repeat_interleave(3, dim=0)
    torch.testing.assert_close(ek.elbo(v, x0, eps, t, backend="torch"), ek.elbo(v, repeated, eps, t, backend="torch"))


@pytest.mark.parametrize("shape", [(1,), (7,), (4, 3, 2), (2, 3, 2, 2), (1, 2, 3, 2, 2)])
def test_any_latent_rank(shape):
    v, x0, eps, t = draws(n=3, shape=shape)
    flat = ek.elbo(v.reshape(3, -1), x0.reshape(3, -1), eps.reshape(3, -1), t, backend="torch")
    torch.testing.assert_close(ek.elbo(v, x0, eps, t, backend="torch"), flat)


def test_permuting_draws_permutes_estimates():
    v, x0, eps, t = draws(n=5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    e = ek.elbo(v, x0, eps, t, backend="torch")
    torch.testing.assert_close(ek.elbo(v[perm], x0[perm], eps[perm], t[perm], backend="torch"), e[perm])


def test_exact_velocity_has_higher_elbo_than_a_biased_one():
    v, x0, eps, t = draws()
    u = eps - x0
    exact = ek.elbo(u, x0, eps, t, weighting="simple", backend="torch")
    assert torch.all(exact == 0)
    assert torch.all(ek.elbo(u + 0.1, x0, eps, t, weighting="simple", backend="torch") < 0)


def test_adaptive_weight_has_its_floor():
    # r = 0 exactly: a clamps at 1e-5 and e is exactly 0, not NaN.
    v, x0, eps, t = draws(n=2)
    e = ek.elbo(eps - x0, x0, eps, t, weighting="adaptive", backend="torch")
    assert torch.equal(e, torch.zeros_like(e))


# --- Closed form: Gaussian data, whose exact flow velocity is known ----------------------------
#
# x0 ~ N(mu, s^2 I), x_t = (1 - t) x0 + t eps. (u, x_t) are jointly Gaussian, so
#   v*(x_t, t) = E[u | x_t] = -mu + c(t) (x_t - (1 - t) mu),  c(t) = (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2).
# For the exact field, log p(x0) = D * E_{t, eps}[e_path_kl] + C with C free of x0 (elbo.py docstring),
# so ELBO differences between data points equal log-density differences.

def gaussian_velocity(mu, s):
    def velocity(x_t, t):
        tt = t.reshape(-1, *([1] * (x_t.dim() - 1)))
        c = (tt - (1 - tt) * s**2) / ((1 - tt) ** 2 * s**2 + tt**2)
        return -mu + c * (x_t - (1 - tt) * mu)

    return velocity


def mc_elbo(velocity, x0, draws_per_point, d, seed=0):
    """D * E[e_path_kl] per data point, stratified t with common random numbers across points."""
    g = torch.Generator().manual_seed(seed)
    b = x0.shape[0]
    k = draws_per_point
    # Stratified t on a log scale (the weight (1 - t) / t concentrates near 0); importance-weighted
    # back to U(0, 1): t = exp(log_lo + (log_hi - log_lo) w), density 1 / (t (log_hi - log_lo)).
    log_lo, log_hi = math.log(1e-4), 0.0
    w = ((torch.arange(k, dtype=torch.float64) + torch.rand(k, generator=g, dtype=torch.float64)) / k)
    t1 = torch.exp(log_lo + (log_hi - log_lo) * w)
    eps1 = torch.randn((k, d), generator=g, dtype=torch.float64)
    t = t1.repeat(b)
    eps = eps1.repeat(b, 1)
    x0r = x0.repeat_interleave(k, dim=0)
    x_t = (1 - t[:, None]) * x0r + t[:, None] * eps
    e = ek.elbo(velocity(x_t, t), x0, eps, t, weighting="path_kl", backend="torch")
    importance = t * (log_hi - log_lo)
    return d * (e * importance).reshape(b, k).mean(1)


def test_elbo_differences_match_exact_gaussian_log_likelihood_differences():
    d, mu, s = 3, 0.7, 0.6
    x0 = torch.tensor([[0.7, 0.7, 0.7], [0.2, 1.5, 0.9], [1.6, -0.3, 0.4]], dtype=torch.float64)
    estimate = mc_elbo(gaussian_velocity(mu, s), x0, 20000, d)
    exact = -((x0 - mu) ** 2).sum(1) / (2 * s**2)  # log N(x0; mu, s^2) up to a constant
    torch.testing.assert_close(estimate - estimate[0], exact - exact[0], atol=0.05, rtol=0.03)


def test_elbo_ranks_the_true_model_above_a_wrong_one():
    d, mu, s = 3, 0.7, 0.6
    g = torch.Generator().manual_seed(1)
    x0 = mu + s * torch.randn(64, d, generator=g, dtype=torch.float64)
    true_elbo = mc_elbo(gaussian_velocity(mu, s), x0, 512, d).mean()
    wrong_mean = mc_elbo(gaussian_velocity(mu + 0.5, s), x0, 512, d).mean()
    wrong_scale = mc_elbo(gaussian_velocity(mu, 1.2 * s), x0, 512, d).mean()
    assert true_elbo > wrong_mean
    assert true_elbo > wrong_scale
