"""The variance-reduction options (docs/variance.md) keep the estimator unbiased, and bad input is refused.

Unbiasedness is checked on a toy velocity field v(x_t, t) = (1 + t) W x_t (old policy: W_old), with the
library's own elbo / policy_loss: the mean of many estimates of (a) the log-ratio averaged over samples and
(b) the pepg gradient's derivative along a fixed direction of W must match a brute-force reference within
5 standard errors (both sides' sampling error). Each check also runs a deliberately wrong variant (the
importance-sampled draws without their 1/q weights) through the same criterion and requires it to fail,
so the tolerance is tight enough to see a bias of that size.
"""

import functools
from types import SimpleNamespace

import pytest
import torch

import elbo_kernels as ek
from elbo_kernels.estimators import grid_importance_timesteps, proposal_from_second_moments, scale_row_gradients
from elbo_kernels.estimators.qmc import sobol_noise
from elbo_kernels.train import TrainConfig
from elbo_kernels.train.errors import ConfigError
from elbo_kernels.train.policy_step import draw_timesteps, share_within_groups

D, B, K = 6, 4, 4
GRID = torch.linspace(1, 0, 11)  # the digits rollout grid (shift 1)
SKEWED = [1, 1, 1, 1, 2, 2, 4, 4, 8, 8]  # a proposal far from uniform


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    w_old = torch.eye(D) * 0.8 + 0.1 * torch.randn(D, D, generator=g)
    w = w_old + 0.15 * torch.randn(D, D, generator=g)
    x0 = torch.randn(B, D, generator=g)
    direction = torch.randn(D, D, generator=g)
    advantages = torch.tensor([0.5, -0.5, 1.0, -1.0])
    return w, w_old, x0, direction, advantages


def _estimates(t, eps, weights, repeats, prompts=None):
    """Per repeat: (mean over samples of the weighted log-ratio, pepg gradient . direction)."""
    w, w_old, x0, direction, adv = _toy()
    x0r = x0.repeat(repeats, 1)  # [R*B, D]; draw n uses x0r[n // K]
    if prompts is not None:
        t, eps, weights = share_within_groups(prompts, K, t, eps, weights)
    x_t = ek.noising(x0r, t, eps)
    scale = (1 + t)[:, None]
    v = (scale * (x_t @ w.T)).requires_grad_(True)
    v_old = scale * (x_t @ w_old.T)
    weight = torch.ones_like(t) if weights is None else weights
    e = ek.elbo(v.detach(), x0r, eps, t)
    e_old = ek.elbo(v_old, x0r, eps, t)
    log_ratio = ((e - e_old) * weight).reshape(repeats, B * K).mean(1)
    vw = v if weights is None else scale_row_gradients(v, weights)
    loss, _ = ek.policy_loss(vw, v_old, None, x0r, eps, t, adv.repeat(repeats).repeat_interleave(K),
                             objective="pepg", kl=None)
    (grad_v,) = torch.autograd.grad(loss, v)
    # dL/dW . direction, row by row: v_n = (1 + t_n) W x_t,n.
    per_row = (grad_v * (scale * (x_t @ direction.T))).sum(1) * v.shape[0]
    grad = per_row.reshape(repeats, B * K).mean(1)
    return log_ratio.double(), grad.double()


@functools.lru_cache(maxsize=1)
def _grid_reference(repeats=4000, seed=1):
    """Brute force over the grid: every positive grid t with many eps each (the grid target is their mean)."""
    positive = GRID[GRID > 0]
    g = torch.Generator().manual_seed(seed)
    out = [[], []]
    for value in positive.tolist():
        t = torch.full((repeats * B * K,), value)
        eps = torch.randn(repeats * B * K, D, generator=g)
        for i, x in enumerate(_estimates(t, eps, None, repeats)):
            out[i].append(x)
    # Repeat r of every t together: one estimate that averages the grid exactly, as the grid target does.
    return [torch.stack(x).mean(0) for x in out]


def _close(estimate, reference):
    se = (estimate.var() / len(estimate) + reference.var() / len(reference)).sqrt()
    return float((estimate.mean() - reference.mean()).abs()) < 5 * float(se), float(se)


def _importance_draws(repeats, seed, proposal):
    g = torch.Generator().manual_seed(seed)
    t, w = grid_importance_timesteps(repeats * B, K, GRID, proposal, generator=g)
    eps = torch.randn(repeats * B * K, D, generator=g)
    return t.reshape(-1), eps, w.reshape(-1)


def test_importance_sampled_grid_timesteps_are_unbiased_and_unweighted_draws_are_not():
    ref_l, ref_g = _grid_reference()
    t, eps, w = _importance_draws(3000, 2, SKEWED)
    for estimate, reference in zip(_estimates(t, eps, w, 3000), (ref_l, ref_g)):
        ok, se = _close(estimate, reference)
        assert ok, (float(estimate.mean()), float(reference.mean()), se)
    # The same draws without the 1/(M q) weights: the skewed proposal's bias must be visible.
    for estimate, reference in zip(_estimates(t, eps, None, 3000), (ref_l, ref_g)):
        assert not _close(estimate, reference)[0]


def test_group_draws_are_unbiased():
    ref_l, ref_g = _grid_reference()
    g = torch.Generator().manual_seed(3)
    repeats = 3000
    t = ek.sample_timesteps(repeats * B, K, sampler="grid", grid=GRID, generator=g).reshape(-1)
    eps = torch.randn(repeats * B * K, D, generator=g)
    prompts = [f"{r}/{i // 2}" for r in range(repeats) for i in range(B)]  # groups of two samples
    for estimate, reference in zip(_estimates(t, eps, None, repeats, prompts), (ref_l, ref_g)):
        ok, se = _close(estimate, reference)
        assert ok, (float(estimate.mean()), float(reference.mean()), se)


def test_sobol_timesteps_and_noise_are_unbiased_against_iid_uniform_draws():
    repeats = 1500
    g = torch.Generator().manual_seed(4)
    t_ref = ek.sample_timesteps(repeats * 8 * B, K, sampler="uniform", generator=g).reshape(-1)
    eps_ref = torch.randn(repeats * 8 * B * K, D, generator=g)
    reference = _estimates(t_ref, eps_ref, None, repeats * 8)
    t = ek.sample_timesteps(repeats * B, K, sampler="sobol", generator=5).reshape(-1)
    eps = ek.sample_noise((repeats * B * K, D), K, mode="sobol", generator=6)
    for estimate, ref in zip(_estimates(t, eps, None, repeats), reference):
        ok, se = _close(estimate, ref)
        assert ok, (float(estimate.mean()), float(ref.mean()), se)
    # Power: the grid's importance-sampled draws without weights estimate something else.
    t_bad, eps_bad, _ = _importance_draws(repeats, 7, SKEWED)
    assert not _close(_estimates(t_bad, eps_bad, None, repeats)[0], reference[0])[0]


def test_sobol_draws_stratify_each_coordinate_within_a_sample():
    t = ek.sample_timesteps(200, 4, sampler="sobol", t_min=1e-3, t_max=1.0, generator=0)
    stratum = ((t - 1e-3) / (1 - 1e-3) * 4).floor()
    assert torch.equal(stratum.sort(1).values, torch.arange(4.0).expand(200, 4))
    eps = ek.sample_noise((200 * 4, 3, 5), 4, mode="sobol", generator=0)
    quartile = torch.bucketize(eps, torch.tensor([-0.6744897501960817, 0.0, 0.6744897501960817]))
    per_sample = quartile.reshape(200, 4, 15).sort(1).values
    assert torch.equal(per_sample, torch.arange(4).reshape(1, 4, 1).expand(200, 4, 15))
    assert torch.equal(eps, ek.sample_noise((800, 3, 5), 4, mode="sobol", generator=0))
    assert not torch.equal(eps, ek.sample_noise((800, 3, 5), 4, mode="sobol", generator=1))


def test_sobol_noise_has_standard_normal_moments():
    eps = sobol_noise((4000 * 4, 8), 4, generator=torch.Generator().manual_seed(0)).double()
    n = eps.numel()
    assert abs(float(eps.mean())) < 5 / n ** 0.5
    assert abs(float(eps.var()) - 1) < 5 * (2 / n) ** 0.5


def test_scale_row_gradients_matches_per_row_weighted_losses():
    _, _, x0, _, adv = _toy()
    g = torch.Generator().manual_seed(8)
    t = ek.sample_timesteps(B, K, sampler="uniform", generator=g).reshape(-1)
    eps = torch.randn(B * K, D, generator=g)
    v = torch.randn(B * K, D, generator=g, dtype=torch.float64).requires_grad_(True)
    v_old = v.detach() + 0.01 * torch.randn(B * K, D, generator=g, dtype=torch.float64)
    weights = torch.rand(B * K, generator=g, dtype=torch.float64) * 3
    x0, eps, t = x0.double(), eps.double(), t.double()
    advantages = adv.double().repeat_interleave(K)
    loss, _ = ek.policy_loss(scale_row_gradients(v, weights), v_old, None, x0, eps, t, advantages, kl=None)
    (fused,) = torch.autograd.grad(loss, v)
    # Reference: each row's loss on its own, weighted explicitly.
    total = 0
    for n in range(B * K):
        one, _ = ek.policy_loss(v[n:n + 1], v_old[n:n + 1], None, x0[n // K:n // K + 1], eps[n:n + 1], t[n:n + 1],
                                advantages[n:n + 1], kl=None)
        total = total + weights[n] * one / (B * K)
    (reference,) = torch.autograd.grad(total, v)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-14)


def test_proposal_from_second_moments_is_the_defended_square_root_rule():
    q = proposal_from_second_moments([1.0, 4.0, 0.0, 9.0], mix=0.2)
    expected = 0.8 * torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=torch.float64) / 6 + 0.2 / 4
    torch.testing.assert_close(q, expected)
    assert float(q.sum()) == pytest.approx(1.0)


def test_group_draws_copy_the_first_sample_of_each_prompt():
    t = torch.arange(12.0)
    eps = torch.arange(12.0)[:, None].expand(12, 3)
    t2, eps2, w2 = share_within_groups(["a", "b", "a"], 4, t, eps, None)
    assert torch.equal(t2, torch.tensor([0.0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3])) and torch.equal(eps2[:, 0], t2)
    assert w2 is None


@pytest.mark.parametrize("proposal, match", [([1.0] * 9, "one value per positive grid timestep"),
                                             ([0.0] + [1.0] * 9, "> 0 everywhere"),
                                             ([float("nan")] + [1.0] * 9, "finite")])
def test_bad_proposal_is_refused_naming_it(proposal, match):
    with pytest.raises(ValueError, match=f"proposal.*{match}|{match}"):
        grid_importance_timesteps(2, 4, GRID, proposal)


def test_bad_weights_and_shapes_are_refused_naming_them():
    with pytest.raises(ValueError, match="weights"):
        scale_row_gradients(torch.zeros(4, 3), torch.ones(3))
    with pytest.raises(ValueError, match="weights must be finite"):
        scale_row_gradients(torch.zeros(2, 3), torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="shape"):
        ek.sample_noise((4, 16, 64, 64), 4, mode="sobol")
    with pytest.raises(ValueError, match="mix"):
        proposal_from_second_moments([1.0, 2.0], mix=0)
    with pytest.raises(ValueError, match="draws_per_sample"):
        grid_importance_timesteps(2, 0, GRID, [1.0] * 10)


@pytest.mark.parametrize("values, key", [
    (dict(timestep_proposal="1,2,3"), "timestep_proposal"),
    (dict(timestep_proposal="1,1,1,1,1,1,1,1,1,0"), "timestep_proposal"),
    (dict(timestep_proposal="1,1,1,1,1,1,1,1,1,x"), "timestep_proposal"),
    (dict(timestep_proposal=",".join(["1"] * 10), timestep_sampler="uniform"), "timestep_proposal"),
    (dict(group_draws="yes"), "group_draws"),
    (dict(noise_mode="quasi"), "noise_mode"),
])
def test_bad_config_values_are_refused_naming_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**values).validate()


def test_trainer_draws_pair_importance_sampled_timesteps_for_antithetic_noise():
    cfg = SimpleNamespace(draws_per_sample=4, noise_mode="antithetic", timestep_sampler="grid",
                          timestep_proposal=",".join(map(str, SKEWED)))
    t, w = draw_timesteps(cfg, GRID, [torch.Generator().manual_seed(i) for i in range(50)])
    assert torch.equal(t[0::2], t[1::2]) and torch.equal(w[0::2], w[1::2])
    q = torch.tensor(SKEWED, dtype=torch.float64) / sum(SKEWED)
    positive = GRID[GRID > 0]
    index = (t[:, None] == positive[None]).float().argmax(1)
    torch.testing.assert_close(w, (1 / (10 * q[index])).float())


def test_trainer_runs_an_epoch_with_the_options_together(tmp_path):
    from elbo_kernels.train import Trainer

    cfg = TrainConfig(output_dir=str(tmp_path), epochs=1, prompts_per_epoch=2, group_size=2, eval_every=0,
                      eval_seeds=2, checkpoint_every=0, plots=False, tensorboard=False, progress=False,
                      noise_mode="sobol", group_draws=True, timestep_proposal="1,1,1,2,2,2,3,3,3,3").validate()
    trainer = Trainer(cfg)
    trainer.fit()
    record = trainer.history[-1]
    assert not record["skipped"] and record["loss"] == record["loss"]


def test_grid_stratified_takes_one_step_per_block_with_the_grid_samplers_inclusion_probability():
    t = ek.sample_timesteps(20000, K, sampler="grid_stratified", grid=GRID, generator=0)
    positive = GRID[GRID > 0]
    index = (t[..., None] == positive).float().argmax(-1)  # [B, K], 0 = t 1.0
    assert torch.equal(t, positive[index])
    assert bool((index.diff(dim=1) >= 2).all()), "the K draws are in different blocks of M/K = 2.5 steps"
    counts = torch.bincount(index.reshape(-1), minlength=10).double() / 20000
    # Each grid value with probability K/M = 0.4, as the plain grid sampler's random 4 of 10.
    assert float((counts - 0.4).abs().max()) < 5 * (0.4 * 0.6 / 20000) ** 0.5


def test_grid_stratified_draws_are_unbiased_against_the_brute_force_grid_average():
    ref_l, ref_g = _grid_reference()
    repeats = 3000
    t = ek.sample_timesteps(repeats * B, K, sampler="grid_stratified", grid=GRID, generator=9).reshape(-1)
    eps = ek.sample_noise((repeats * B * K, D), K, mode="sobol", generator=10)
    for estimate, reference in zip(_estimates(t, eps, None, repeats), (ref_l, ref_g)):
        ok, se = _close(estimate, reference)
        assert ok, (float(estimate.mean()), float(reference.mean()), se)
