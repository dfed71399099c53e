"""Counter-based Gaussian noise: eps regenerated from (seed, offset) instead of stored.

Specification (the same on every backend): for the flat element index i of an
[N, *S] tensor (row-major), eps[i] is ``triton.language.randn(seed, offset + i)``:
Philox4x32-10 keyed by the 64-bit seed, counter offset + i, the first two
32-bit outputs mapped to uniforms and through Box-Muller to one normal.

(The generator's torch reference implementation is being written.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NoiseSeed:
    """Stands in for an eps tensor: eps is regenerated from (seed, offset) in-kernel."""

    seed: int
    offset: int = 0


def generate_noise(shape, noise_seed, *, device=None, dtype=None, backend="torch"):
    raise NotImplementedError("being written")
