"""The DiffusionNFT and AWM drop-ins (integrations/diffusion_nft.py, awm.py) against their papers' math.

Oracles: tests/flow_family_reference.py, float64, value and gradient with respect to the
current velocity, on every backend the policy loss runs on here.
"""

import types

import pytest
import torch

import elbo_kernels as ek
from elbo_kernels.integrations.awm import awm_loss
from elbo_kernels.integrations.diffusion_nft import nft_loss
from flow_family_reference import awm_log_prob, awm_reference_loss, nft_reference_loss

BACKENDS = ["torch"] + [name for name in ("cpu", "triton") if ek.available_backends()[name]]


def velocities(n, shape=(4, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    eps = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    v = eps - x0 + 0.5 * torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    v_old, v_ref, v_ema = (v + s * torch.randn(v.shape, generator=g, dtype=torch.float64) for s in (0.05, 0.1, 0.02))
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return v, v_old, v_ref, v_ema, x0, eps, t, g


def nft_config(beta=0.7, kl_weight=0.3, backend="torch"):
    return types.SimpleNamespace(beta=beta, train=types.SimpleNamespace(beta=kl_weight, adv_clip_max=5.0,
                                                                         backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kl_weight", [0.3, 0.0])
def test_nft_loss_equals_diffusion_nfts_loss_in_value_gradient_and_logged_terms(backend, kl_weight):
    v0, v_old, v_ref, _, x0, eps, t, g = velocities(5)
    r = torch.rand(5, generator=g, dtype=torch.float64)
    v, w = v0.clone().requires_grad_(), v0.clone().requires_grad_()
    loss, terms = nft_loss(v, v_old, v_ref, x0, eps, t, r, nft_config(kl_weight=kl_weight, backend=backend))
    expected, policy, kl = nft_reference_loss(w, v_old, v_ref, x0, eps, t, r, g=0.7, adv_clip_max=5.0,
                                              kl_weight=kl_weight)
    loss.backward()
    expected.backward()
    # nft_loss runs in float32 (the script's predictions are float32 or autocast): float32 rounding.
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v.grad, w.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["policy_loss"].double(), policy.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["unweighted_policy_loss"].double(), policy.detach() / 5, rtol=1e-5, atol=1e-6)
    for key in ("kl_div_loss", "kl_div"):
        torch.testing.assert_close(terms[key].double(), kl.detach(), rtol=1e-5, atol=1e-7)


def awm_case(weighting="ghuber", kl_weight="Uniform", kl_ema_weight="Uniform", train_timesteps=3, batch=2,
             backend="torch", **train):
    n = train_timesteps * batch
    v, v_old, v_ref, v_ema, x0, eps, t, g = velocities(n)
    t[0] = 1.0  # AWM's std clamps t at 0.99: t = 1 stays finite
    v_old = torch.cat([v[: n // 2], v_old[n // 2:]])  # on-policy draws (ratio 1, inside the clip) and others
    values = dict(adv_clip_max=5.0, advantage_max=1, loss_type="exp_first", clip_range=1e-4, beta=0.3, ema_beta=0.7,
                  kl_weight=kl_weight, kl_ema_weight=kl_ema_weight, weighting=weighting, ghuber_power=0.25,
                  train_timesteps=train_timesteps, backend=backend)
    values.update(train)
    config = types.SimpleNamespace(train=types.SimpleNamespace(**values))
    sample = {"advantages": 3 * torch.randn(batch, 1, generator=g, dtype=torch.float64),
              "old_log_probs": awm_log_prob(v_old, x0, eps, t, weighting).reshape(train_timesteps, batch),
              "timesteps": t.reshape(-1, 1, 1, 1).float(), "clean_latents": x0.float(), "train_random_noise": eps.float()}
    return config, sample, v, v_ref, v_ema, x0.float().double(), eps.float().double(), t.float().double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighting,kl_weight,kl_ema_weight", [("ghuber", "Uniform", "Uniform"), ("t", "ELBO", "Uniform"),
                                                               ("t**2", "Uniform", "ELBO"), ("Uniform", "ELBO", "ELBO")])
def test_awm_loss_equals_awms_loss_in_value_gradient_and_logged_terms(backend, weighting, kl_weight, kl_ema_weight):
    config, sample, v0, v_ref, v_ema, x0, eps, t = awm_case(weighting, kl_weight, kl_ema_weight, backend=backend)
    v, w = v0.clone().requires_grad_(), v0.clone().requires_grad_()
    loss, info = awm_loss(sample, config, v, v_ref, v_ema)
    expected, policy, kl, ema_kl, clipfrac = awm_reference_loss(
        w, v_ref, v_ema, x0, eps, t, sample["advantages"][:, 0], sample["old_log_probs"].reshape(-1),
        weighting=weighting, power=0.25, clip_range=1e-4, adv_clip_max=5.0, advantage_max=1, beta=0.3,
        kl_weight=kl_weight, ema_beta=0.7, kl_ema_weight=kl_ema_weight)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v.grad, w.grad, rtol=1e-8, atol=1e-12)
    for key, value in (("policy_loss", policy), ("kl_loss", kl), ("ema_kl_loss", ema_kl), ("clipfrac", clipfrac)):
        torch.testing.assert_close(info[key], value.detach(), rtol=1e-10, atol=1e-12)
    assert 0 < float(clipfrac) < 1  # the clip is exercised: some ratios inside the range, some outside


def test_awm_loss_logs_kl_keys_only_when_their_weights_are_positive():
    config, sample, v, v_ref, v_ema, *_ = awm_case(beta=0.0, ema_beta=0.0)
    _, info = awm_loss(sample, config, v, None, None)
    assert set(info) == {"clipfrac", "policy_loss"}


@pytest.mark.parametrize("key,value,message", [("loss_type", "sum_first", "only 'exp_first'"),
                                               ("weighting", "huber", "has no fused counterpart"),
                                               ("kl_weight", "L1", "config.train.kl_weight 'L1'")])
def test_awm_options_without_a_counterpart_are_named(key, value, message):
    config, sample, v, v_ref, v_ema, *_ = awm_case()
    setattr(config.train, key, value)
    with pytest.raises(ValueError, match=message):
        awm_loss(sample, config, v, v_ref, v_ema)
