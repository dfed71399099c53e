"""Where the K draws of each sample are taken: timestep samplers and noise options.

Timestep samplers return t [B, K] in (0, 1] (flatten to [B*K] for the loss; the
K draws of a sample are consecutive rows):

    grid          the rollout sampler's own grid (sigmas > 0), a random permutation per
                  sample, the first K used (the study: 9 of 10 steps, fresh eps each)
    uniform       t ~ U(t_min, t_max)
    logit_normal  t = sigmoid(m + s z), z ~ N(0, 1), clamped to [t_min, t_max]
    stratified    t = t_min + (t_max - t_min) (k + U_k) / K, one draw per stratum k
    sobol         t = t_min + (t_max - t_min) u, u a per-sample randomised Sobol set (estimators/qmc.py)
    grid_stratified  the grid values by a randomly shifted lattice: one in each block of M/K
                  neighbouring steps, each value chosen with probability K/M as by "grid" (estimators/qmc.py)
    grid_strata   AWM's schedule: the grid steps first_step..last_step - 1 (rollout order, step 0 is
                  t = 1) cut into K strata at floor(linspace(first_step, last_step, K + 1)), one step
                  drawn uniformly in each (AWM's GenEval configs: steps 1-11 of 14, K = 6)

Noise options return eps [B*K, *S]:

    iid           independent N(0, I) per draw
    antithetic    draws in consecutive pairs (eps, -eps) within each sample's K draws
                  (K must be even); with paired timesteps (``sample_timesteps(paired=True)``)
                  the pair shares its t, which is what lets the odd-order terms cancel
    sobol         Phi^-1 of a per-sample randomised Sobol set in prod(S) dimensions (estimators/qmc.py)

All take a ``torch.Generator`` (or a seed) so runs are reproducible.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .._validation import check_choice, check_tensor
from .qmc import grid_lattice_timesteps, sobol_noise, sobol_timesteps

TIMESTEP_SAMPLERS = ("grid", "uniform", "logit_normal", "stratified", "sobol", "grid_stratified", "grid_strata")
NOISE_MODES = ("iid", "antithetic", "sobol")

GeneratorLike = Union[torch.Generator, int, None]


def _generator(generator: GeneratorLike, device) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        g = torch.Generator(device=device)
        g.manual_seed(generator)
        return g
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def sample_timesteps(
    batch_size: int,
    draws_per_sample: int,
    *,
    sampler: str = "grid",
    grid: Optional[torch.Tensor] = None,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: GeneratorLike = None,
    device=None,
    paired: bool = False,
    first_step: int = 1,
    last_step: Optional[int] = None,
) -> torch.Tensor:
    """Timesteps t [B, K] for K draws per sample (module docstring lists the samplers).

    Args:
        batch_size: B >= 1 samples.
        draws_per_sample: K >= 1 draws each.
        sampler: "grid", "uniform", "logit_normal", "stratified", "sobol" or "grid_stratified".
        grid: for "grid" and "grid_stratified", the rollout's sigma grid (any order; zeros are dropped); K must not
            exceed the number of positive grid values.
        t_min, t_max: bounds for the continuous samplers, 0 < t_min < t_max <= 1.
        paired: draw K/2 timesteps and give each to two consecutive draws (K even), so that
            antithetic noise pairs (eps, -eps) share their t and can cancel.
        first_step, last_step: for "grid_strata", the steps first_step <= j < last_step of the positive
            grid in its given order (None: all of them); K <= last_step - first_step.
    Returns:
        float32 tensor [B, K] on ``device`` (grid's device for "grid").
    Raises:
        ValueError naming the argument for a bad sampler, sizes or bounds.
    """
    check_choice("sampler", sampler, TIMESTEP_SAMPLERS)
    for name, value in (("batch_size", batch_size), ("draws_per_sample", draws_per_sample)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 < t_min < t_max <= 1:
        raise ValueError(f"t_min and t_max must satisfy 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if paired:
        if draws_per_sample % 2:
            raise ValueError(f"paired timesteps need an even draws_per_sample, got {draws_per_sample}")
        half = sample_timesteps(batch_size, draws_per_sample // 2, sampler=sampler, grid=grid, t_min=t_min, t_max=t_max,
                                logit_mean=logit_mean, logit_std=logit_std, generator=generator, device=device,
                                first_step=first_step, last_step=last_step)
        return half.repeat_interleave(2, dim=1)
    if sampler == "grid_strata":
        return _grid_strata(batch_size, draws_per_sample, grid, first_step, last_step, _generator(generator, "cpu"))
    if sampler in ("grid", "grid_stratified"):
        if grid is None:
            raise ValueError(f"sampler {sampler!r} needs grid=<the rollout's sigma grid>")
        check_tensor("grid", grid)
        positive = grid[grid > 0].to(torch.float32)
        if draws_per_sample > positive.numel():
            raise ValueError(
                f"draws_per_sample={draws_per_sample} exceeds the {positive.numel()} positive values of the grid"
            )
        gen = _generator(generator, "cpu")
        if sampler == "grid_stratified":
            return grid_lattice_timesteps(batch_size, draws_per_sample, positive.cpu(), generator=gen).to(grid.device)
        order = torch.argsort(torch.rand(batch_size, positive.numel(), generator=gen), dim=1)[:, :draws_per_sample]
        return positive.cpu()[order].to(grid.device)
    gen = _generator(generator, "cpu")
    shape = (batch_size, draws_per_sample)
    if sampler == "uniform":
        t = t_min + (t_max - t_min) * torch.rand(shape, generator=gen)
    elif sampler == "sobol":
        t = sobol_timesteps(batch_size, draws_per_sample, t_min=t_min, t_max=t_max, generator=gen)
    elif sampler == "logit_normal":
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(shape, generator=gen)).clamp(t_min, t_max)
    else:
        strata = torch.arange(draws_per_sample, dtype=torch.float32)
        t = t_min + (t_max - t_min) * (strata + torch.rand(shape, generator=gen)) / draws_per_sample
    return t.clamp_(min=t_min, max=t_max).to(device)


def _grid_strata(batch_size, draws_per_sample, grid, first_step, last_step, gen) -> torch.Tensor:
    if grid is None:
        raise ValueError("sampler 'grid_strata' needs grid=<the rollout's sigma grid>")
    check_tensor("grid", grid)
    positive = grid[grid > 0].to(torch.float32)
    last_step = positive.numel() if last_step is None else last_step
    for name, value in (("first_step", first_step), ("last_step", last_step)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if not 0 <= first_step < last_step <= positive.numel():
        raise ValueError(f"first_step and last_step must satisfy 0 <= first_step < last_step <= {positive.numel()} "
                         f"(the positive grid steps), got first_step={first_step}, last_step={last_step}")
    if draws_per_sample > last_step - first_step:
        raise ValueError(f"draws_per_sample={draws_per_sample} exceeds the {last_step - first_step} grid steps "
                         f"{first_step}..{last_step - 1} that 'grid_strata' cuts into strata")
    # Stratum edges: float32 linspace truncated to integers, as AWM's torch.linspace(...).long().
    edges = torch.linspace(first_step, last_step, draws_per_sample + 1).long()
    lower, width = edges[:-1], edges[1:] - edges[:-1]
    u = torch.rand(batch_size, draws_per_sample, generator=gen, dtype=torch.float64)
    index = lower + (u * width).floor().long()
    return positive.cpu()[index].to(grid.device)


def sample_noise(
    shape: Sequence[int],
    draws_per_sample: int,
    *,
    mode: str = "iid",
    generator: GeneratorLike = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """eps [N, *S] for N = B * K draws (shape = (N, *S)); mode "iid", "antithetic" or "sobol".

    Raises:
        ValueError for an unknown mode, N not a multiple of K, or odd K with "antithetic".
    """
    check_choice("mode", mode, NOISE_MODES)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"shape must be (N, *S) with N >= 1, got {shape}")
    draws = shape[0]
    if draws_per_sample < 1 or draws % draws_per_sample:
        raise ValueError(f"shape[0]={draws} must be a multiple of draws_per_sample={draws_per_sample}")
    gen = _generator(generator, "cpu")
    if mode == "iid":
        return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    if mode == "sobol":
        return sobol_noise(shape, draws_per_sample, generator=gen).to(device=device, dtype=dtype)
    if draws_per_sample % 2:
        raise ValueError(f"mode 'antithetic' pairs draws, so draws_per_sample must be even, got {draws_per_sample}")
    half = torch.randn((draws // 2,) + shape[1:], generator=gen)
    eps = torch.stack([half, -half], dim=1).reshape(shape)
    return eps.to(device=device, dtype=dtype)
