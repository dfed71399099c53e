"""Naive references written straight from docs/design.md section 2, in float64.

Deliberately unlike the library: everything goes through x_t and x0_hat, one
draw at a time, with explicit per-objective formulas, so that a shared mistake
in the library's residual-sum formulation cannot hide.
"""

import math

import torch


def expand_x0(x0, n):
    k = n // x0.shape[0]
    return torch.stack([x0[i // k] for i in range(n)])


def naive_elbo_draw(v, x0, eps, t, weighting, v_sg=None):
    """One draw: v, x0, eps [*S] float64; t float.

    Stop-gradient quantities (the adaptive weight) are computed from ``v_sg`` when given,
    so that finite differences in v hold them fixed, as autograd does.
    """
    v_sg = v.detach() if v_sg is None else v_sg
    x_t = (1 - t) * x0 + t * eps
    x0_hat = x_t - t * v
    err = x0_hat - x0  # = t * (u - v)
    r = (eps - x0) - v
    power = 0.25
    if isinstance(weighting, tuple):  # ("ghuber", power)
        weighting, power = weighting
    if weighting == "simple":
        return -(r**2).mean()
    if weighting == "t_squared":  # the x0-space error
        return -(err**2).mean()
    if weighting == "t_linear":
        return -t * (r**2).mean()
    if weighting == "ghuber":  # AWM: -t ((mse + 1e-10)^p - (1e-10)^p) / p
        return -t * (((r**2).mean() + 1e-10) ** power - 1e-10 ** power) / power
    if weighting == "path_kl":
        return -((1 - t) / (t + 1e-3)) * (r**2).mean()
    if weighting == "adaptive":
        a = torch.clamp((t * ((eps - x0) - v_sg)).abs().mean(), min=1e-5)
        return -(err**2).mean() / a
    raise ValueError(weighting)


def naive_elbo(v, x0, eps, t, weighting, v_sg=None):
    x0 = expand_x0(x0, v.shape[0])
    v_sg = v.detach() if v_sg is None else v_sg
    return torch.stack(
        [naive_elbo_draw(v[i], x0[i], eps[i], float(t[i]), weighting, v_sg[i]) for i in range(v.shape[0])]
    )


def naive_nft_loss_draw(v, v_old, x0, eps, t, weighting, g, v_sg):
    v_plus = g * v + (1 - g) * v_old
    v_minus = (1 + g) * v_old - g * v
    plus_sg = g * v_sg + (1 - g) * v_old
    minus_sg = (1 + g) * v_old - g * v_sg
    return (
        -naive_elbo_draw(v_plus, x0, eps, t, weighting, plus_sg),
        -naive_elbo_draw(v_minus, x0, eps, t, weighting, minus_sg),
    )


def sde_kl_variance(t):
    """AWM's "ELBO" KL weight divides by 2 std^2, std = sqrt(t / (1 - clamp(t, 0, 0.99))) * 0.7."""
    return (math.sqrt(t / (1 - min(max(t, 0.0), 0.99))) * 0.7) ** 2


def naive_velocity_kl(v, v_other, t, kl):
    k = ((v - v_other) ** 2).mean()
    return k / (2 * sde_kl_variance(t)) if kl == "girsanov_sde" else k


def naive_policy_loss(v, v_old, v_ref, x0, eps, t, adv, *, objective, weighting, kl, beta,
                      clip_range=1e-3, adv_clip_max=5.0, nft_beta=1.0, v_sg=None,
                      v_anchor=None, anchor_beta=0.0, anchor_kl="girsanov"):
    """Mean per-draw objective + beta * mean KL (+ anchor_beta * mean anchor KL); stop-gradient
    values come from v_sg (default v)."""
    n = v.shape[0]
    v_sg = v.detach() if v_sg is None else v_sg
    x0 = expand_x0(x0, n)
    per_draw, kls = [], []
    for i in range(n):
        ti, a = float(t[i]), adv[i]
        e = naive_elbo_draw(v[i], x0[i], eps[i], ti, weighting, v_sg[i])
        e_old = naive_elbo_draw(v_old[i], x0[i], eps[i], ti, weighting)
        log_ratio = naive_elbo_draw(v_sg[i], x0[i], eps[i], ti, weighting) - e_old
        rho = math.exp(float(log_ratio))
        if objective == "epg":
            loss = -rho * a * e
        elif objective == "epg_noratio":
            loss = -a * e
        elif objective == "pepg":
            loss = -rho * (a - log_ratio) * e
        elif objective == "pepg_noratio":
            loss = -(a - log_ratio) * e
        elif objective == "par":
            loss = 0.5 * rho * (a - (e - e_old)) ** 2
        elif objective == "par_noratio":
            loss = 0.5 * (a - (e - e_old)) ** 2
        elif objective == "grpo":
            ac = torch.clamp(a, -adv_clip_max, adv_clip_max)
            q = torch.exp(e - e_old)
            loss = torch.maximum(-ac * q, -ac * torch.clamp(q, 1 - clip_range, 1 + clip_range))
        elif objective == "nft":
            lp, lm = naive_nft_loss_draw(v[i], v_old[i], x0[i], eps[i], ti, weighting, nft_beta, v_sg[i])
            loss = adv_clip_max * (a * lp + (1 - a) * lm) / nft_beta
        elif objective == "awm":
            loss = torch.clamp(a, -adv_clip_max, adv_clip_max) * (-e)
        else:
            raise ValueError(objective)
        per_draw.append(loss)
        if kl is not None:
            e_ref = naive_elbo_draw(v_ref[i], x0[i], eps[i], ti, weighting)
            d = e - e_ref
            base = kl.replace("_iw", "")
            if kl in ("girsanov", "girsanov_sde"):
                k = naive_velocity_kl(v[i], v_ref[i], ti, kl)
            elif base == "kl1":
                k = d
            elif base == "kl2":
                k = 0.5 * d**2
            else:
                k = torch.exp(-d) - 1 + d
            if kl.endswith("_iw"):
                k = rho * k
            kls.append(k)
    loss = torch.stack(per_draw).mean()
    if kl is not None:
        loss = loss + beta * torch.stack(kls).mean()
    if anchor_beta > 0:
        anchors = [naive_velocity_kl(v[i], v_anchor[i], float(t[i]), anchor_kl) for i in range(n)]
        loss = loss + anchor_beta * torch.stack(anchors).mean()
    return loss


def flowgrpo_sde_step(v, x, x_prev, sigma, sigma_prev, noise_level, sde_type, sigma_max):
    """FlowGRPO's sde_step_with_logprob formula (float64), per row sigma [N]."""
    shape = (-1,) + (1,) * (v.dim() - 1)
    sigma = sigma.reshape(shape).double()
    sigma_prev = sigma_prev.reshape(shape).double()
    dt = sigma_prev - sigma
    if sde_type == "sde":
        std = torch.sqrt(sigma / (1 - torch.where(sigma == 1, torch.full_like(sigma, sigma_max), sigma))) * noise_level
        mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
        log_prob = (
            -((x_prev - mean) ** 2) / (2 * (std * torch.sqrt(-dt)) ** 2)
            - torch.log(std * torch.sqrt(-dt))
            - math.log(math.sqrt(2 * math.pi))
        )
    else:
        std = sigma_prev * math.sin(noise_level * math.pi / 2)
        x0_pred = x - sigma * v
        x1_pred = x + v * (1 - sigma)
        mean = x0_pred * (1 - sigma_prev) + x1_pred * torch.sqrt(sigma_prev**2 - std**2)
        log_prob = -((x_prev - mean) ** 2)
    return log_prob.mean(dim=tuple(range(1, v.dim()))), mean, std.reshape(-1)


def central_difference_gradient(fn, v, h=1e-6):
    """d fn / d v by central differences (float64), one element at a time."""
    grad = torch.zeros_like(v)
    flat = grad.view(-1)
    for i in range(v.numel()):
        step = torch.zeros_like(v).view(-1)
        step[i] = h
        step = step.view_as(v)
        flat[i] = (fn(v + step) - fn(v - step)) / (2 * h)
    return grad
