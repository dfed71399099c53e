"""Seeds -> medians with bootstrap 95% intervals, and ratios of medians (speedups) with theirs.

A seed that never reached the target is +inf in a median (so a majority of failures makes the median
"not reached"), and is also counted on its own: callers report reached / collapsed / budget counts
next to every median, never a median of the reached seeds alone without them.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

BOOTSTRAP = 4000
LEVEL = 0.95


def _as_array(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.array([math.inf if v is None else float(v) for v in values], dtype=np.float64)


def _median_rows(samples: np.ndarray) -> np.ndarray:
    """Median of each row; with +inf entries numpy's median is still right (inf sorts last)."""
    ordered = np.sort(samples, axis=1)
    n = ordered.shape[1]
    if n % 2:
        return ordered[:, n // 2]
    return (ordered[:, n // 2 - 1] + ordered[:, n // 2]) / 2  # inf + x = inf: a failed middle seed stays inf


def median_interval(values: Sequence[Optional[float]], seed: int = 0) -> dict:
    """{"median", "low", "high", "n"}: the median over seeds and its percentile-bootstrap 95% interval
    (seeds resampled with replacement). None entries (target never reached) count as +inf."""
    x = _as_array(values)
    if x.size == 0:
        return {"median": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(BOOTSTRAP, x.size))]
    medians = _median_rows(samples)
    low, high = np.quantile(medians, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="lower")
    return {"median": float(_median_rows(x[None])[0]), "low": float(low), "high": float(high), "n": int(x.size)}


def ratio_interval(numerator: Sequence[Optional[float]], denominator: Sequence[Optional[float]],
                   seed: int = 0) -> dict:
    """median(numerator) / median(denominator) with a bootstrap 95% interval, the two seed sets resampled
    independently. inf / finite = inf (the baseline never got there), finite / inf = 0; inf / inf has no
    value and is left out of the interval (its share is reported as "undefined")."""
    a, b = _as_array(numerator), _as_array(denominator)
    if a.size == 0 or b.size == 0:
        return {"ratio": None, "low": None, "high": None, "undefined": None}
    rng = np.random.default_rng(seed)
    ma = _median_rows(a[rng.integers(0, a.size, size=(BOOTSTRAP, a.size))])
    mb = _median_rows(b[rng.integers(0, b.size, size=(BOOTSTRAP, b.size))])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = ma / mb
    defined = ratios[~np.isnan(ratios)]
    point_a, point_b = float(_median_rows(a[None])[0]), float(_median_rows(b[None])[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        point = np.float64(point_a) / np.float64(point_b)
    result = {"ratio": None if np.isnan(point) else float(point), "low": None, "high": None,
              "undefined": float(1 - defined.size / ratios.size)}
    if defined.size:
        low, high = np.quantile(defined, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="lower")
        result.update(low=float(low), high=float(high))
    return result


def counts(stops: List[str], reached: List[bool]) -> dict:
    """How the seeds ended: reached the target, collapsed / diverged / failed, or ran out of budget."""
    failed = [s for s, r in zip(stops, reached) if not r and s != "budget"]
    return {"seeds": len(stops), "reached": sum(reached), "collapsed": len(failed),
            "budget": sum(1 for s, r in zip(stops, reached) if not r and s == "budget"),
            "failure_reasons": sorted(set(failed))}
