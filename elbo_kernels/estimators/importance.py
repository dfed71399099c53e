"""Importance-sampled timesteps on the rollout grid, with the 1/q reweighting that keeps estimates unbiased.

The grid sampler (estimators/timesteps.py) gives every draw a timestep that is marginally
uniform over the M positive grid values, so an estimate averages p_i = 1/M over them. Here
each draw's timestep index i is drawn from a proposal q instead (with replacement) and the
draw carries the weight

    w = p_i / q_i = 1 / (M q_i),        E_q[w f(t_i)] = sum_i q_i f(t_i) / (M q_i) = mean_i f(t_i),

so any average of per-draw values, and its gradient, keeps its expectation for every q with
q_i > 0. The variance of one draw's w f is sum_i f_i^2 / (M^2 q_i) - mean^2, smallest at
q_i proportional to sqrt(E[f^2 | t_i]) (:func:`proposal_from_second_moments`, measured on
pilot draws); a share ``mix`` of the uniform proposal bounds every weight by 1 / mix, so that
a badly measured profile cannot blow the variance up (defensive importance sampling).

The policy loss is a mean of per-draw terms, each a function of its own row of v only (the
adaptive weighting's scale is under stop-gradient), so weighting draw n's term by w_n is the
same as scaling the gradient that flows into row n of v by w_n: :func:`scale_row_gradients`
does that without touching the loss (its forward value and statistics stay unweighted).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .._validation import check_tensor


def check_proposal(name: str, proposal: Union[Sequence[float], torch.Tensor], size: int) -> torch.Tensor:
    """The proposal as float64 probabilities [size] (normalised); ValueError naming ``name`` otherwise."""
    q = torch.as_tensor(proposal, dtype=torch.float64).reshape(-1)
    if q.numel() != size:
        raise ValueError(f"{name} must give one value per positive grid timestep ({size}), got {q.numel()}")
    if not bool(torch.isfinite(q).all()) or not bool((q > 0).all()):
        raise ValueError(f"{name} must be finite and > 0 everywhere (a zero would make the 1/q weights infinite), "
                         f"got {q.tolist()}")
    return q / q.sum()


def grid_importance_timesteps(
    batch_size: int,
    draws_per_sample: int,
    grid: torch.Tensor,
    proposal: Union[Sequence[float], torch.Tensor],
    *,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(t [B, K], weights [B, K]): grid timesteps drawn from ``proposal``, and their weights 1 / (M q).

    Args:
        grid: the rollout's sigma grid (zeros dropped; the order of the positive values is the
            order of ``proposal``).
        proposal: M relative probabilities > 0, one per positive grid value.
    Returns:
        float32 tensors on grid's device.
    Raises:
        ValueError naming the argument for bad sizes, a grid without positive values or a bad proposal.
    """
    for name, value in (("batch_size", batch_size), ("draws_per_sample", draws_per_sample)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    check_tensor("grid", grid)
    positive = grid[grid > 0].to(torch.float32).cpu()
    if positive.numel() == 0:
        raise ValueError("grid has no positive timesteps")
    q = check_proposal("proposal", proposal, positive.numel())
    index = torch.multinomial(q.expand(batch_size, -1), draws_per_sample, replacement=True, generator=generator)
    weights = (1.0 / (positive.numel() * q))[index]
    return positive[index].to(grid.device), weights.to(torch.float32).to(grid.device)


def proposal_from_second_moments(second_moments: Union[Sequence[float], torch.Tensor], mix: float = 0.25) -> torch.Tensor:
    """q_i = (1 - mix) sqrt(m_i) / sum_j sqrt(m_j) + mix / M: the variance-optimal proposal, defended.

    Args:
        second_moments: E[f^2 | t_i] >= 0 per positive grid value (e.g. measured on pilot draws).
        mix: share of the uniform proposal, in (0, 1]; every weight is then at most M / (M mix) = 1 / mix.
    """
    m = torch.as_tensor(second_moments, dtype=torch.float64).reshape(-1)
    if m.numel() == 0 or not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
        raise ValueError(f"second_moments must be a non-empty list of finite values >= 0, got {m.tolist()}")
    if not 0 < mix <= 1:
        raise ValueError(f"mix must be in (0, 1], got {mix}")
    root = m.sqrt()
    shape = root / root.sum() if float(root.sum()) > 0 else torch.full_like(m, 1.0 / m.numel())
    return (1 - mix) * shape + mix / m.numel()


class _ScaleRowGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, weights):
        ctx.save_for_backward(weights)
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad):
        (weights,) = ctx.saved_tensors
        return grad * weights.to(grad.dtype).reshape((-1,) + (1,) * (grad.dim() - 1)), None


def scale_row_gradients(v: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """v unchanged in the forward; the gradient flowing back into row n is multiplied by weights[n].

    Raises:
        ValueError / TypeError naming the argument when weights is not a finite [N] tensor matching v's rows.
    """
    check_tensor("v", v)
    if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or weights.shape[0] != v.shape[0]:
        raise ValueError(f"weights must be a 1-D tensor with one value per row of v ({v.shape[0]}), "
                         f"got {weights if not isinstance(weights, torch.Tensor) else tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("weights must be finite")
    return _ScaleRowGradients.apply(v, weights.detach().to(v.device))
