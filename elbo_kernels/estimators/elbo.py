"""The ELBO estimator of log pi_theta(x0 | prompt), one (t, eps) draw at a time.

Forward process (rectified flow, SD3 convention; t in (0, 1], t = 1 is noise):

    x_t = (1 - t) x0 + t eps,   u = eps - x0,   r = u - v_theta(x_t, t),   x0_hat - x0 = t r

Per-draw estimates e (log pi up to a theta-free constant; "mean" is over the D
latent elements of a draw):

    simple    e = -mean(r^2)
    t_squared e = -t^2 mean(r^2) = -mean((x0_hat - x0)^2)   (the x0-space error; "t" is its old name)
    t_linear  e = -t mean(r^2)                                (AWM's "t")
    path_kl   e = -((1 - t) / (t + 1e-3)) mean(r^2)
    adaptive  e = -mean((t r)^2) / a,   a = stopgrad(max(mean(|t r|), 1e-5))     (default)
    ghuber    e = -t ((mean(r^2) + d)^p - d^p) / p,   d = 1e-10, p = power (0.25 default)
              (AWM's generalised Huber: p = 1 is t_linear; small p flattens large errors)

"path_kl" is the continuous-time variational bound itself: with lambda = log(alpha^2 /
sigma^2) = 2 log((1 - t) / t), the diffusion ELBO -1/2 E[lambda'(t) ||eps - eps_hat||^2]
becomes E_t~U(0,1) [ (1 - t) / t * ||u - v||^2 ], so for every x0

    log p_theta(x0) >= D * E_{t ~ U(0,1), eps}[ e_path_kl ] + C,

with C independent of theta and of x0 (and equality when v is the exact velocity
field of p_theta). The other weightings reweight t, so they are surrogates of
log p_theta rather than bounds on it; "adaptive" also normalises each draw's
scale (the study's default), which is what the policy objectives want.

"t" meant t^2 mean(r^2) here and t mean(r^2) in AWM's code; it still resolves to
"t_squared", with a DeprecationWarning.

Everything an estimate needs from the [N, D] tensors is two row sums,
S1 = sum |r| and S2 = sum r^2 (ops/residual_sums.py computes them fused); the
weightings below are scalar functions of mean|r| = S1 / D and mean r^2 = S2 / D.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Union

import torch

from .._validation import (
    check_choice,
    check_finite_through,
    check_per_draw,
    check_same_layout,
    check_tensor,
    check_timesteps,
    check_x0,
    row_count,
)
from ..backends import resolve_backend
from ..ops.noise import NoiseSeed, check_noise_seed
from ..ops.noising import noising_op
from ..ops.residual_sums import COLUMN, residual_sums

ADAPTIVE_FLOOR = 1e-5
PATH_KL_EPS = 1e-3
GHUBER_DELTA = 1e-10  # AWM's offset: keeps the power's derivative finite at a zero residual
GHUBER_POWER = 0.25  # AWM's published GenEval and OCR configs


def _simple(mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -mean_sq


def _t_squared(mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -t.square() * mean_sq


def _t_linear(mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -t * mean_sq


def _ghuber(mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor, *, power: float) -> torch.Tensor:
    # A function of mean r^2 alone, so it is a per-draw scale of the fused op's S2 column: the
    # gradient stays the one elementwise pass alpha_b r (alpha_b = t (mean r^2 + d)^(p - 1) * 2 / D).
    return -t * ((mean_sq + GHUBER_DELTA).pow(power) - GHUBER_DELTA ** power) / power


def _path_kl(mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -((1 - t) / (t + PATH_KL_EPS)) * mean_sq


def _adaptive(mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # The study computes a in float64; our sums are fp32-accumulated for fp32 inputs,
    # which matches its value to fp32 rounding.
    a = (t * mean_abs.detach()).clamp_min(ADAPTIVE_FLOOR)
    return -t.square() * mean_sq / a


@dataclass(frozen=True)
class Weighting:
    """One weighting of the per-draw ELBO (module docstring): e = estimate(mean|r|, mean r^2, t).

    power: the exponent p of "ghuber" (None for the other weightings).
    """

    name: str
    estimate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    power: Optional[float] = None

    def __call__(self, mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.estimate(mean_abs, mean_sq, t.to(mean_sq.dtype))


def ghuber(power: float = GHUBER_POWER) -> Weighting:
    """AWM's generalised-Huber weighting with exponent ``power`` (module docstring).

    Raises ValueError naming 'power' unless it is a finite number > 0.
    """
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power <= 0:
        raise ValueError(f"power must be a finite number > 0 (ghuber's exponent; AWM uses 0.25), got {power!r}")
    return Weighting("ghuber", functools.partial(_ghuber, power=float(power)), power=float(power))


WEIGHTING_RECORDS: Dict[str, Weighting] = {
    w.name: w for w in (Weighting("simple", _simple), Weighting("t_squared", _t_squared),
                        Weighting("t_linear", _t_linear), Weighting("path_kl", _path_kl),
                        Weighting("adaptive", _adaptive), ghuber())
}
WEIGHTINGS = tuple(WEIGHTING_RECORDS)
DEPRECATED_WEIGHTINGS = {"t": "t_squared"}  # old name -> the name it means


def weighting_record(weighting: Union[str, Weighting], power: Optional[float] = None) -> Weighting:
    """The record of ``weighting`` (a name or a record).

    ``power`` sets ghuber's exponent (None: 0.25); it is an error with any other weighting.
    The old name "t" gives "t_squared" with a DeprecationWarning.
    Raises ValueError naming 'weighting' (unknown name) or 'power'.
    """
    if isinstance(weighting, Weighting):
        if power is not None and power != weighting.power:
            raise ValueError(f"power={power!r} conflicts with the weighting record {weighting.name!r} "
                             f"(power {weighting.power!r}); pass the name, or ghuber(power)")
        return weighting
    if weighting in DEPRECATED_WEIGHTINGS:
        new = DEPRECATED_WEIGHTINGS[weighting]
        warnings.warn(f"weighting {weighting!r} is deprecated: it means {new!r} (t^2 mean(r^2)); AWM's 't' "
                      "(t mean(r^2)) is 't_linear'", DeprecationWarning, stacklevel=3)
        weighting = new
    check_choice("weighting", weighting, WEIGHTINGS + tuple(DEPRECATED_WEIGHTINGS))
    if weighting == "ghuber":
        return ghuber(GHUBER_POWER if power is None else power)
    if power is not None:
        raise ValueError(f"power is ghuber's exponent; weighting {weighting!r} takes none, got power={power!r}")
    return WEIGHTING_RECORDS[weighting]


def elbo_from_moments(
    mean_abs: torch.Tensor, mean_sq: torch.Tensor, t: torch.Tensor, weighting: Union[str, Weighting] = "adaptive"
) -> torch.Tensor:
    """Per-draw ELBO e from mean|r| and mean r^2 of the velocity residual r = u - v.

    Args:
        mean_abs: [N] mean over D of |r| (used only by "adaptive", under stop-gradient).
        mean_sq: [N] mean over D of r^2 (differentiable).
        t: [N] timesteps in (0, 1].
        weighting: a name of WEIGHTINGS, or its :class:`Weighting` record.
    Returns:
        e [N] in mean_sq's dtype.
    Raises:
        ValueError naming 'weighting' for an unknown weighting.
    """
    return weighting_record(weighting)(mean_abs, mean_sq, t)


# The residual-sum columns of each velocity: current, old, reference and nft's blends v+- .
_SUM_COLUMNS = {"S": ("S1", "S2"), "O": ("O1", "O2"), "R": ("R1", "R2"), "P": ("P1", "P2"), "M": ("M1", "M2")}


def elbo_from_sums(sums: torch.Tensor, t: torch.Tensor, d: int, weighting: Weighting, which: str = "S") -> torch.Tensor:
    """e from the residual-sum columns (which = "S" current, "O" old, "R" reference, "P"/"M" nft blends).

    ``weighting`` is a resolved :class:`Weighting` record: callers check the name once, at their entry.
    """
    first, second = _SUM_COLUMNS[which]
    return weighting(sums[:, COLUMN[first]] / d, sums[:, COLUMN[second]] / d, t)


def validate_draws(v, x0, noise, t, **others) -> tuple:
    """Shared checks of the per-draw inputs; returns (draws_per_sample K = N / B, t as [N] tensor).

    Finiteness of the big tensors is checked after the op, through its sums
    (:func:`check_finite_through`), so that validation does not cost a pass over them.
    """
    check_tensor("v", v)
    draws_per_sample = check_x0(x0, v)
    if isinstance(noise, NoiseSeed):
        check_noise_seed(noise, v.numel())
    else:
        check_same_layout("v", v, noise=noise)
    check_same_layout("v", v, **others)
    t = check_per_draw("t", t, v.shape[0], v.device)
    check_timesteps(t)
    return draws_per_sample, t


def elbo(
    v: torch.Tensor,
    x0: torch.Tensor,
    noise: Union[torch.Tensor, NoiseSeed],
    t,
    *,
    weighting: Union[str, Weighting] = "adaptive",
    backend: str = "auto",
) -> torch.Tensor:
    """Per-draw ELBO estimate e_theta (module docstring has the formulas).

    Args:
        v: model velocities v_theta(x_t, t) [N, *S] for any latent shape S; float16, bfloat16,
            float32 or float64. Gradients flow back to v.
        x0: clean samples [N, *S], or [B, *S] with N = B * K, in which case draw n uses
            x0[n // K] (the K draws of a sample are consecutive rows); never copied.
        noise: eps [N, *S] used to make x_t, or a NoiseSeed(seed, offset) to regenerate it.
        t: [N] timesteps in (0, 1] (a float is broadcast).
        weighting: a name of WEIGHTINGS ("simple", "t_squared", "t_linear", "path_kl", "adaptive",
            "ghuber") or a :class:`Weighting` record such as ``ghuber(0.5)``.
        backend: "auto", "torch", "cpu", "cuda" or "triton".
    Returns:
        e [N], float32 (float64 for float64 inputs).
    Raises:
        TypeError / ValueError naming the argument: mismatched shapes, dtypes or devices,
        t outside (0, 1], NaN/Inf inputs, an empty batch, unknown weighting or backend.
    """
    _, t = validate_draws(v, x0, noise, t)
    weighting = weighting_record(weighting)
    backend = resolve_backend(backend, v.device)
    sums = residual_sums(v, x0, noise, backend=backend)
    check_finite_through(sums, "the ELBO's residual sums", v=v, x0=x0, noise=noise)
    return elbo_from_sums(sums, t, row_count(v.shape), weighting)


def noising(x0: torch.Tensor, t, noise: Union[torch.Tensor, NoiseSeed], *, backend: str = "auto") -> torch.Tensor:
    """The forward process x_t = (1 - t) x0 + t eps for N = B * K draws, fused.

    Args:
        x0: clean samples [B, *S]; draw n uses x0[n // K] (not copied).
        t: [N] timesteps in (0, 1]; N must be a multiple of B.
        noise: eps [N, *S], or NoiseSeed(seed, offset) to generate it in-kernel (the same eps
            the loss regenerates from the same NoiseSeed).
        backend: "auto", "torch", "cpu", "cuda" or "triton".
    Returns:
        x_t [N, *S] in x0's dtype.
    Raises:
        TypeError / ValueError naming the argument for bad shapes, dtypes, devices or values.
    """
    check_tensor("x0", x0)
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError(f"t must be a 1-D tensor [N] of timesteps, got {t!r:.80}")
    n = t.shape[0]
    if n == 0 or n % x0.shape[0]:
        raise ValueError(f"t has {n} draws, which must be a positive multiple of x0's {x0.shape[0]} rows")
    t = check_per_draw("t", t, n, x0.device)
    check_timesteps(t)
    if isinstance(noise, NoiseSeed):
        check_noise_seed(noise, n * x0[0].numel())
    else:
        check_tensor("noise", noise)
        if noise.shape != (n,) + tuple(x0.shape[1:]):
            raise ValueError(f"noise must have shape {(n,) + tuple(x0.shape[1:])}, got {tuple(noise.shape)}")
        if noise.dtype != x0.dtype or noise.device != x0.device:
            raise TypeError(f"noise must match x0's dtype and device ({x0.dtype}, {x0.device}), "
                            f"got ({noise.dtype}, {noise.device})")
    x_t = noising_op(x0, t, noise, backend=resolve_backend(backend, x0.device))
    check_finite_through(x_t, "x_t", x0=x0, noise=noise)
    return x_t
