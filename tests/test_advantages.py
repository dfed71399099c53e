"""ek.group_advantages and the per-prompt tracker."""

import numpy as np
import pytest
import torch

import elbo_kernels as ek


def test_standard_mode_standardises_each_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 16.0])
    adv = ek.group_advantages(rewards, [0, 0, 0, 1, 1, 1])
    for group in (slice(0, 3), slice(3, 6)):
        r = rewards[group].double()
        expected = (r - r.mean()) / (r.std(unbiased=False) + 1e-4)
        torch.testing.assert_close(adv[group].double(), expected, rtol=1e-5, atol=1e-6)


def test_groups_may_be_interleaved_and_named_by_strings():
    rewards = torch.tensor([1.0, 5.0, 3.0, 7.0])
    adv = ek.group_advantages(rewards, ["a", "b", "a", "b"], mode="exact", scale=0.1)
    torch.testing.assert_close(adv, torch.tensor([-0.1, -0.1, 0.1, 0.1]))


def test_global_std_divides_by_the_std_of_all_rewards():
    rewards = torch.tensor([1.0, 3.0, 10.0, 20.0])
    adv = ek.group_advantages(rewards, [0, 0, 1, 1], global_std=True)
    std = rewards.std(unbiased=False)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -5.0, 5.0]) / (std + 1e-4))


def test_zero_spread_groups_give_exact_zeros():
    rewards = torch.tensor([0.3, 0.3, 0.3, 1.0, 2.0])
    for mode in ("standard", "exact"):
        adv = ek.group_advantages(rewards, [0, 0, 0, 1, 1], mode=mode)
        assert torch.equal(adv[:3], torch.zeros(3))
        assert torch.isfinite(adv).all()
    p = ek.group_advantages(rewards, [0, 0, 0, 1, 1], mode="nft")
    assert torch.equal(p[:3], torch.full((3,), 0.5))


def test_nft_mode_maps_clipped_standard_advantages_into_unit_interval():
    rewards = torch.zeros(40)
    rewards[1] = 1.0  # one success in 40: its standardised advantage exceeds M = 5
    ids = [0] * 40
    a = ek.group_advantages(rewards, ids)
    p = ek.group_advantages(rewards, ids, mode="nft", adv_clip_max=5.0)
    torch.testing.assert_close(p, a.clamp(-5, 5) / 5 / 2 + 0.5)
    assert float(p.max()) == 1.0 and float(p.min()) >= 0


def test_tracker_matches_flowgrpo_semantics_and_counts_zero_spread():
    tracker = ek.PerPromptStatTracker()
    prompts = ["a", "a", "b", "b", "c", "c"]
    rewards = np.array([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])
    adv = tracker.update(prompts, rewards)
    np.testing.assert_allclose(adv, [-1 / 1.0001, 1 / 1.0001, 0, 0, -2 / 2.0001, 2 / 2.0001], rtol=1e-9)
    assert tracker.zero_std_ratio == pytest.approx(1 / 3)
    assert tracker.get_stats() == (2.0, 3)
    # Statistics accumulate across updates until clear().
    adv2 = tracker.update(["a"], [5.0])
    history = np.array([1.0, 3.0, 5.0])
    np.testing.assert_allclose(adv2, [(5 - history.mean()) / (history.std() + 1e-4)])
    tracker.clear()
    assert tracker.get_stats() == (0.0, 3)


def test_tracker_state_round_trips():
    tracker = ek.PerPromptStatTracker(global_std=True)
    tracker.update(["x", "y"], [1.0, 2.0])
    clone = ek.PerPromptStatTracker()
    clone.load_state_dict(tracker.state_dict())
    assert clone.state_dict() == tracker.state_dict()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rewards_are_rejected(bad):
    with pytest.raises(ValueError, match="rewards"):
        ek.group_advantages(torch.tensor([1.0, bad]), [0, 0])
    with pytest.raises(ValueError, match="rewards"):
        ek.PerPromptStatTracker().update(["a", "a"], [1.0, bad])


def test_group_ids_must_match_rewards():
    with pytest.raises(ValueError, match="group_ids"):
        ek.group_advantages(torch.tensor([1.0, 2.0]), [0])
    with pytest.raises(ValueError, match="mode"):
        ek.group_advantages(torch.tensor([1.0, 2.0]), [0, 0], mode="rank")
