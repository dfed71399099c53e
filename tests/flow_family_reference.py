"""DiffusionNFT's and AWM's training losses, written out independently from their papers' formulas.

The oracles of tests/test_flow_family.py and of the stand-in checkouts of
tests/test_flow_family_check.py. Plain eager torch, any dtype (float64 in the tests).

DiffusionNFT (one timestep of its loop, B samples): x_t = (1 - t) x0 + t eps; the blended
velocities v+ = g v + (1 - g) v_old and v- = (1 + g) v_old - g v give x0 predictions
x_t - t v+-, each scored by its squared error over the stop-gradient mean absolute error;
r in [0, 1] weighs the positive against the negative branch.

AWM (T draws per sample, timestep-major rows): the per-draw log-likelihood surrogate is a
weighting of the mean squared velocity residual; the loss is GRPO's clip on the ratio to the
recorded old values, plus KLs to the base model and to an EMA anchor.
"""

import torch


def nft_reference_loss(v, v_old, v_ref, x0, eps, t, r, *, g, adv_clip_max, kl_weight):
    """Returns (loss, policy_loss, kl) for one DiffusionNFT timestep; v carries the gradient."""
    view = (-1,) + (1,) * (x0.dim() - 1)
    t = t.reshape(view)
    x_t = (1 - t) * x0 + t * eps
    v_old = v_old.detach()
    branch_losses = []
    for blended in (g * v + (1 - g) * v_old, (1 + g) * v_old - g * v):
        error = (x_t - t * blended) - x0
        scale = error.detach().abs().flatten(1).mean(1).clamp(min=1e-5)
        branch_losses.append(error.square().flatten(1).mean(1) / scale)
    positive, negative = branch_losses
    policy = (adv_clip_max * (r * positive + (1 - r) * negative) / g).mean()
    kl = (v - v_ref.detach()).square().flatten(1).mean(1).mean()
    return policy + kl_weight * kl, policy, kl


def awm_log_prob(v, x0, eps, t, weighting, power=0.25):
    """AWM's per-draw surrogate e [N] from the mean squared residual m = mean (v - (eps - x0))^2."""
    m = (v - (eps - x0)).square().flatten(1).mean(1)
    t = t.reshape(-1)
    if weighting == "ghuber":
        return -t * ((m + 1e-10) ** power - 1e-10 ** power) / power
    if weighting == "t":
        return -t * m
    if weighting == "t**2":
        return -t * t * m
    if weighting == "Uniform":
        return -m
    raise ValueError(weighting)


def awm_kl(v, v_other, t, kind):
    k = (v - v_other.detach()).square().flatten(1).mean(1)
    if kind == "ELBO":
        t = t.reshape(-1)
        std = torch.sqrt(t / (1 - torch.clamp(t, 0, 0.99))) * 0.7
        k = k / (2 * std ** 2)
    return k.mean()


def awm_reference_loss(v, v_ref, v_ema, x0, eps, t, advantages, old_log_probs, *, weighting, power, clip_range,
                       adv_clip_max, advantage_max, beta, kl_weight, ema_beta, kl_ema_weight):
    """Returns (loss, policy_loss, kl, ema_kl, clipfrac) for one AWM batch of N = T B draws.

    advantages [B] (one per sample), rows timestep-major: draw n is sample n mod B.
    """
    a = advantages.clamp(-adv_clip_max, adv_clip_max)
    if advantage_max is not None:
        a = a / adv_clip_max * advantage_max
    a = a.repeat(v.shape[0] // a.shape[0])
    ratio = torch.exp(awm_log_prob(v, x0, eps, t, weighting, power) - old_log_probs.detach())
    policy = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    kl, ema_kl = awm_kl(v, v_ref, t, kl_weight), awm_kl(v, v_ema, t, kl_ema_weight)
    clipfrac = ((ratio - 1).abs() > clip_range).to(v.dtype).mean()
    return policy + beta * kl + ema_beta * ema_kl, policy, kl, ema_kl, clipfrac

