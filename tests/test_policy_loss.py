"""ek.policy_loss: every objective x weighting x kl against the naive reference, and its properties."""

import itertools

import pytest
import torch

import elbo_kernels as ek
from reference import central_difference_gradient, naive_elbo, naive_policy_loss

OBJECTIVES = list(ek.OBJECTIVES)
WEIGHTINGS = list(ek.WEIGHTINGS)
KLS = list(ek.KL_ESTIMATORS) + [None]


def batch(n=4, shape=(3, 2), b=2, seed=0, objective="pepg", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((b,) + shape, generator=g, dtype=dtype)
    eps = torch.randn((n,) + shape, generator=g, dtype=dtype)
    u = eps - x0.repeat_interleave(n // b, dim=0)
    # Velocities near the target, so ratios stay in a sane range, and three distinct policies.
    v = u + 0.5 * torch.randn((n,) + shape, generator=g, dtype=dtype)
    v_old = v + 0.05 * torch.randn((n,) + shape, generator=g, dtype=dtype)
    v_ref = v + 0.1 * torch.randn((n,) + shape, generator=g, dtype=dtype)
    t = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.1
    if objective == "nft":
        adv = torch.rand(n, generator=g, dtype=dtype)
    else:
        adv = torch.randn(n, generator=g, dtype=dtype)
    return v, v_old, v_ref, x0, eps, t, adv


@pytest.mark.parametrize("objective,weighting,kl", list(itertools.product(OBJECTIVES, WEIGHTINGS, KLS)))
def test_loss_and_gradient_match_naive_reference(objective, weighting, kl):
    v0, v_old, v_ref, x0, eps, t, adv = batch(objective=objective)
    kwargs = dict(objective=objective, weighting=weighting, kl=kl, beta=0.3, clip_range=0.02, nft_beta=0.7)
    v = v0.clone().requires_grad_()
    loss, _ = ek.policy_loss(v, v_old, v_ref, x0, eps, t, adv, backend="torch", **kwargs)
    loss.backward()
    expected = naive_policy_loss(v0, v_old, v_ref, x0, eps, t, adv, **kwargs)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    # float64 finite differences with the stop-gradient quantities (adaptive weight, rho, l)
    # held at their values at v0: the gradient autograd should produce.
    numeric = central_difference_gradient(
        lambda w: naive_policy_loss(w, v_old, v_ref, x0, eps, t, adv, v_sg=v0, **kwargs), v0
    )
    torch.testing.assert_close(v.grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("objective", ["epg_noratio", "par_noratio", "grpo", "awm"])
@pytest.mark.parametrize("weighting", ["simple", "t_squared", "t_linear", "path_kl", "ghuber"])
def test_gradcheck_where_there_is_no_stop_gradient(objective, weighting):
    v, v_old, v_ref, x0, eps, t, adv = batch(objective=objective)
    v.requires_grad_()

    def loss(v):
        return ek.policy_loss(
            v, v_old, v_ref, x0, eps, t, adv, objective=objective, weighting=weighting,
            kl="girsanov", beta=0.5, clip_range=0.2, backend="torch",
        )[0]

    assert torch.autograd.gradcheck(loss, (v,))


def test_on_policy_ratio_is_exactly_one_and_epg_pepg_grpo_agree_in_direction():
    v0, _, v_ref, x0, eps, t, adv = batch()
    grads, stats = {}, {}
    for objective in ("epg", "pepg", "grpo"):
        v = v0.clone().requires_grad_()
        loss, stats[objective] = ek.policy_loss(
            v, v0, v_ref, x0, eps, t, adv, objective=objective, kl=None, backend="torch"
        )
        loss.backward()
        grads[objective] = v.grad.flatten()
    for s in stats.values():
        assert s["ratio_mean"].item() == 1.0 and s["ratio_max"].item() == 1.0
        assert s["approx_kl"].item() == 0.0 and s["clipfrac"].item() == 0.0
    torch.testing.assert_close(grads["epg"], grads["pepg"], rtol=0, atol=0)
    cosine = torch.nn.functional.cosine_similarity(grads["epg"], grads["grpo"], dim=0)
    assert cosine > 0.999


@pytest.mark.parametrize("objective", ["epg", "epg_noratio", "pepg", "pepg_noratio", "awm", "grpo"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_step_along_negative_gradient_moves_elbo_with_the_advantage(objective, sign):
    v0, _, _, x0, eps, t, _ = batch(n=2, b=2)
    adv = torch.full((2,), sign, dtype=torch.float64)
    v = v0.clone().requires_grad_()
    loss, _ = ek.policy_loss(v, v0, None, x0, eps, t, adv, objective=objective, kl=None,
                             clip_range=0.5, backend="torch")
    loss.backward()
    before = ek.elbo(v0, x0, eps, t, backend="torch")
    after = ek.elbo(v0 - 1e-3 * v.grad, x0, eps, t, backend="torch")
    assert torch.all(torch.sign(after - before) == sign)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_permuting_draws_permutes_the_per_draw_contributions(objective):
    v, v_old, v_ref, x0, eps, t, adv = batch(n=4, b=4, objective=objective)
    perm = torch.tensor([2, 0, 3, 1])
    a = ek.policy_loss(v, v_old, v_ref, x0, eps, t, adv, objective=objective, backend="torch")[0]
    b = ek.policy_loss(v[perm], v_old[perm], v_ref[perm], x0[perm], eps[perm], t[perm], adv[perm],
                       objective=objective, backend="torch")[0]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_stats_report_the_documented_quantities():
    v, v_old, v_ref, x0, eps, t, adv = batch()
    loss, stats = ek.policy_loss(v, v_old, v_ref, x0, eps, t, adv, kl="girsanov", beta=0.1,
                                 clip_range=0.01, backend="torch")
    e = naive_elbo(v, x0, eps, t, "adaptive")
    e_old = naive_elbo(v_old, x0, eps, t, "adaptive")
    ratio = torch.exp(e - e_old)
    torch.testing.assert_close(stats["elbo_mean"], e.mean())
    torch.testing.assert_close(stats["elbo_old_mean"], e_old.mean())
    torch.testing.assert_close(stats["ratio_mean"], ratio.mean())
    torch.testing.assert_close(stats["ratio_max"], ratio.max())
    torch.testing.assert_close(stats["approx_kl"], 0.5 * ((e - e_old) ** 2).mean())
    torch.testing.assert_close(stats["clipfrac"], ((ratio - 1).abs() > 0.01).double().mean())
    torch.testing.assert_close(stats["kl"], ((v - v_ref) ** 2).mean())
    torch.testing.assert_close(loss, stats["policy_loss"] + 0.1 * stats["kl"])


def test_gradients_flow_to_v_only():
    v, v_old, v_ref, x0, eps, t, adv = batch()
    tensors = [x.clone().requires_grad_() for x in (v, v_old, v_ref, x0, eps)]
    loss, _ = ek.policy_loss(*tensors, t, adv, backend="torch")
    loss.backward()
    assert tensors[0].grad is not None
    assert all(x.grad is None or torch.all(x.grad == 0) for x in tensors[1:])


def test_objectives_without_old_policy_accept_none():
    v, _, v_ref, x0, eps, t, adv = batch()
    loss, _ = ek.policy_loss(v, None, v_ref, x0, eps, t, adv, objective="awm", backend="torch")
    assert torch.isfinite(loss)
