"""Timestep samplers and noise options."""

import pytest
import torch

import elbo_kernels as ek


def test_grid_sampler_permutes_the_positive_grid_values_per_sample():
    grid = torch.linspace(1, 0, 11)
    t = ek.sample_timesteps(5, 9, sampler="grid", grid=grid, generator=0)
    assert t.shape == (5, 9)
    for row in t:
        assert len(set(row.tolist())) == 9
        assert all(any(abs(x - g) < 1e-7 for g in grid[:-1].tolist()) for x in row.tolist())
    assert not torch.equal(t[0], t[1])


def test_grid_sampler_rejects_more_draws_than_grid_values():
    with pytest.raises(ValueError, match="draws_per_sample"):
        ek.sample_timesteps(1, 11, sampler="grid", grid=torch.linspace(1, 0, 11))


@pytest.mark.parametrize("sampler", ["uniform", "logit_normal", "stratified"])
def test_continuous_samplers_stay_in_bounds_and_are_seeded(sampler):
    a = ek.sample_timesteps(64, 8, sampler=sampler, t_min=0.05, t_max=0.95, generator=3)
    b = ek.sample_timesteps(64, 8, sampler=sampler, t_min=0.05, t_max=0.95, generator=3)
    assert torch.equal(a, b)
    assert a.min() >= 0.05 and a.max() <= 0.95


def test_stratified_sampler_puts_one_draw_in_each_stratum():
    t = ek.sample_timesteps(100, 4, sampler="stratified", t_min=1e-3, t_max=1.0, generator=0)
    stratum = ((t - 1e-3) / (1 - 1e-3) * 4).floor().clamp(max=3)
    assert torch.equal(stratum, torch.arange(4.0).expand(100, 4))


def test_uniform_sampler_has_uniform_moments():
    t = ek.sample_timesteps(20000, 5, sampler="uniform", t_min=1e-3, t_max=1.0, generator=0)
    assert abs(float(t.mean()) - 0.5005) < 0.005


def test_antithetic_noise_pairs_consecutive_draws():
    eps = ek.sample_noise((8, 3, 4), 4, mode="antithetic", generator=0)
    torch.testing.assert_close(eps[0::2], -eps[1::2])


def test_antithetic_noise_needs_even_draws():
    with pytest.raises(ValueError, match="even"):
        ek.sample_noise((6, 3), 3, mode="antithetic")


def test_iid_noise_is_seeded():
    assert torch.equal(ek.sample_noise((4, 3), 2, generator=1), ek.sample_noise((4, 3), 2, generator=1))


def test_paired_timesteps_give_each_antithetic_pair_one_t():
    t = ek.sample_timesteps(3, 6, sampler="uniform", generator=0, paired=True)
    assert t.shape == (3, 6)
    torch.testing.assert_close(t[:, 0::2], t[:, 1::2])
    assert len(set(t[0].tolist())) == 3
    with pytest.raises(ValueError, match="even"):
        ek.sample_timesteps(1, 3, sampler="uniform", paired=True)
