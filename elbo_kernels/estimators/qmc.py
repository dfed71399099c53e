"""Quasi-Monte Carlo draws: randomised Sobol timesteps and noise for the K draws of a sample.

Each sample gets its own randomised copy of the first K Sobol points (torch's ``SobolEngine``
points, randomised by a random digital shift plus a jitter inside the last bit, both drawn from the
caller's generator; far cheaper than building a scrambled engine per sample):

    t    = t_min + (t_max - t_min) u,            u the set's points in [0, 1)
    eps  = Phi^-1(u),                             u in [0, 1)^D, one dimension per latent element

The randomisation makes every point uniform on [0, 1)^D, so each draw has the same marginal
distribution as an iid draw (U(t_min, t_max) for t, N(0, I) for eps) and every estimator
that averages per-draw values stays unbiased; only the correlation between the K draws of a
sample changes. Within a sample, each coordinate of the first 2^m points falls once into each
of 2^m equal strata, so K = 4 draws stratify every latent element (and t) into quarters:
the part of a per-draw value that is additive over the coordinates is integrated much more
evenly than by iid draws. Nothing is gained on the parts that couple many coordinates.

On the rollout grid (M positive values t_1 > ... > t_M), the 1-D analogue is a randomly shifted
lattice (systematic sampling): with one uniform shift s in [0, M/K) per sample, draw j takes the grid
value of index floor(s + j M / K). Each grid value is then chosen with probability exactly K / M (the
same inclusion probability as the plain grid sampler's random K of M), so the average over the K draws
keeps the grid average as its expectation, while the K draws always cover the grid evenly (one in each
block of M / K neighbouring steps) instead of possibly bunching at one end.

Draw values u are clamped to [2^-40, 1 - 2^-40] before Phi^-1 so that no eps is infinite; the
probability mass moved by the clamp is 2^-39 per coordinate.

Sobol sequences are defined up to ``SobolEngine.MAXDIM`` (21201) dimensions: the noise needs
one dimension per latent element, so latents larger than that (e.g. SD3's 16 x 64 x 64) are
refused with an error naming the argument.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
from torch.quasirandom import SobolEngine

U_CLAMP = 2.0 ** -40


BITS = SobolEngine.MAXBIT  # torch's Sobol points are multiples of 2^-BITS


@functools.lru_cache(maxsize=16)
def _sobol_integers(dimension: int, k: int) -> torch.Tensor:
    """The first k (unrandomised) Sobol points in ``dimension`` dims as integers in [0, 2^BITS), int64 [k, dimension]."""
    points = SobolEngine(dimension, scramble=False).draw(k, dtype=torch.float64)
    return (points * 2.0 ** BITS).round().long()


def _points(count: int, dimension: int, k: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``count`` independently randomised copies of the first k Sobol points, float64 [count, k, dimension] in [0, 1).

    Each copy gets a random digital shift (its integer coordinates XOR one uniform BITS-bit integer per
    dimension) and a uniform jitter inside the last bit: every point is then exactly U[0, 1)^dimension, and the
    XOR permutes the dyadic strata of each coordinate, so the stratification of the first 2^m points survives.
    """
    base = _sobol_integers(dimension, k)
    shift = torch.randint(0, 2 ** BITS, (count, 1, dimension), generator=generator)
    jitter = torch.rand(count, k, dimension, generator=generator, dtype=torch.float64)
    return ((base[None] ^ shift).double() + jitter) / 2.0 ** BITS


def sobol_timesteps(batch_size: int, draws_per_sample: int, *, t_min: float, t_max: float,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """t [B, K] in [t_min, t_max]: per sample, the first K points of its own randomised 1-D Sobol set.

    Arguments are checked by :func:`sample_timesteps` (sampler "sobol"), which calls this.
    """
    u = _points(batch_size, 1, draws_per_sample, generator)[..., 0]
    return (t_min + (t_max - t_min) * u).to(torch.float32)


def grid_lattice_timesteps(batch_size: int, draws_per_sample: int, positive: torch.Tensor,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """t [B, K] from the positive grid values by a randomly shifted lattice (systematic sampling).

    Arguments are checked by :func:`sample_timesteps` (sampler "grid_stratified"), which calls this.
    """
    m, k = positive.numel(), draws_per_sample
    positive = positive.sort(descending=True).values  # blocks of neighbouring steps, whatever the grid's order
    shift = torch.rand(batch_size, 1, generator=generator, dtype=torch.float64) * (m / k)
    index = (shift + torch.arange(k, dtype=torch.float64) * (m / k)).floor().long().clamp_(max=m - 1)
    return positive[index]


def sobol_noise(shape: Sequence[int], draws_per_sample: int,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """eps [N, *S] (float32): sample b's K draws are Phi^-1 of its own randomised Sobol set in D = prod(S) dims.

    Raises:
        ValueError naming ``shape`` when D exceeds SobolEngine.MAXDIM.
    """
    n, k = shape[0], draws_per_sample
    d = 1
    for s in shape[1:]:
        d *= int(s)
    if d > SobolEngine.MAXDIM:
        raise ValueError(f"shape {tuple(shape)}: noise mode 'sobol' needs one Sobol dimension per latent element, "
                         f"and {d} elements exceed SobolEngine.MAXDIM = {SobolEngine.MAXDIM}; use 'iid' or "
                         f"'antithetic' for latents this large")
    u = _points(n // k, d, k, generator).reshape(n, d).clamp_(U_CLAMP, 1 - U_CLAMP)
    eps = torch.special.ndtri(u)
    return eps.to(torch.float32).reshape(tuple(shape))
