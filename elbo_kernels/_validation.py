"""Argument checks shared by every public entry point.

Every check raises ``ValueError`` or ``TypeError`` whose message names the
argument, what was expected and what came in. Nothing here is silent: a shape
that would broadcast wrongly is an error, never a reshape.

Under ``torch.compile`` shape, dtype and device checks run at trace time as in
eager mode, but checks of tensor *values* (finiteness, ranges) cannot branch on
data without breaking the graph. There they become ``torch._assert_async``
nodes in the compiled graph (:func:`require_all`): the same condition, checked
on the device, raising RuntimeError with a message naming the argument (without
the offending values, which a compiled graph cannot format).

Eagerly, a value check reads one bool back from the device, which makes the host
wait for the GPU once per check. Inside ``async_value_checks()`` (or with
``ELBO_KERNELS_ASYNC_CHECKS=1``) eager calls use the compiled form instead: the
same conditions as device-side asserts, no host synchronisation, a RuntimeError
naming the argument at the next synchronisation (the same cost model as a
compiled graph; on CPU tensors the assert is checked at once).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"


def check_tensor(name: str, x, *, min_dim: int = 1, float_only: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got {describe(x)}")
    if float_only and x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch ({describe(x)}): at least one row is required")
    if x.numel() == 0:
        # A mean over zero latent elements is 0/0: every backend would return NaN without a word.
        raise ValueError(f"{name} has a zero-size latent dimension ({describe(x)}): every dimension after the "
                         f"batch must be >= 1")
    return x


ASYNC_CHECKS_ENV = "ELBO_KERNELS_ASYNC_CHECKS"
_async = threading.local()


@contextlib.contextmanager
def async_value_checks(enabled: bool = True) -> Iterator[None]:
    """Value checks (NaN/Inf, ranges) as device-side asserts inside the block: no host sync.

    A failed check raises RuntimeError naming the argument at the next synchronisation
    instead of ValueError with the offending values at the call. Thread-local; nests.
    """
    previous = getattr(_async, "enabled", None)
    _async.enabled = bool(enabled)
    try:
        yield
    finally:
        _async.enabled = previous


def _async_checks() -> bool:
    enabled = getattr(_async, "enabled", None)
    if enabled is None:
        return os.environ.get(ASYNC_CHECKS_ENV, "0").strip().lower() in ("1", "true", "yes", "on")
    return enabled


def compiling() -> bool:
    """True while torch.compile traces the caller (value checks must not branch on data then),
    or when eager value checks are asked to be asynchronous (``async_value_checks``)."""
    return torch.compiler.is_compiling() or _async_checks()


def require_all(condition: torch.Tensor, message: str, got: Optional[Callable[[], str]] = None) -> None:
    """Raise ValueError unless every element of the bool tensor ``condition`` is true.

    ``message`` names the argument and what is expected; ``got()`` (eager mode only) describes
    the values that came in. While compiling, this is a ``torch._assert_async`` of the same
    condition with ``message`` (RuntimeError when the compiled graph runs).
    """
    if compiling():
        torch._assert_async(condition.all(), message)
        return
    if not bool(condition.all()):
        raise ValueError(message + (f", got {got()}" if got is not None else ""))


def check_finite(name: str, x: torch.Tensor) -> None:
    if compiling():
        torch._assert_async(torch.isfinite(x).all(), f"{name} contains non-finite values (NaN or Inf)")
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf); {describe(x)}")


def check_finite_through(output: torch.Tensor, what: str, **inputs) -> None:
    """Finiteness of big inputs, checked through a small output of the op that read them.

    Scanning every [N, D] input for NaN/Inf would cost a full extra read of each (more than
    the fused kernel itself). Any non-finite element reaches the op's row sums, so the inputs
    are scanned only when the output is non-finite, to name the argument that carried it.
    While compiling, the output's finiteness is asserted in the graph, and the message lists
    the arguments that may have carried the NaN/Inf.
    """
    if compiling():
        names = ", ".join(name for name, x in inputs.items() if isinstance(x, torch.Tensor))
        torch._assert_async(torch.isfinite(output).all(),
                            f"{what} is non-finite: one of {names} contains NaN or Inf (or the values overflow)")
        return
    if bool(torch.isfinite(output).all()):
        return
    for name, x in inputs.items():
        if isinstance(x, torch.Tensor):
            check_finite(name, x)
    raise ValueError(
        f"{what} is non-finite although every input is finite: the values overflow the "
        f"{output.dtype} accumulation (inputs of magnitude ~1e19 or more)"
    )


def check_same_layout(reference_name: str, reference: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    """Each of ``others`` must have exactly the shape, dtype and device of ``reference``."""
    for name, x in others.items():
        if x is None:
            continue
        check_tensor(name, x)
        if x.shape != reference.shape:
            raise ValueError(
                f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, got {tuple(x.shape)}"
            )
        if x.dtype != reference.dtype:
            raise TypeError(f"{name} must have the dtype of {reference_name} ({reference.dtype}), got {x.dtype}")
        if x.device != reference.device:
            raise ValueError(
                f"{name} must be on the device of {reference_name} ({reference.device}), got {x.device}"
            )


def check_x0(x0: torch.Tensor, v: torch.Tensor) -> int:
    """x0 is [N, *S] or [B, *S] with N = B * K. Returns K (draws per sample)."""
    check_tensor("x0", x0)
    if x0.dim() != v.dim() or x0.shape[1:] != v.shape[1:]:
        raise ValueError(
            f"x0 must be [N, *S] or [B, *S] with the latent shape S of v {tuple(v.shape[1:])}, "
            f"got {tuple(x0.shape)}"
        )
    n, b = v.shape[0], x0.shape[0]
    if n % b != 0:
        raise ValueError(
            f"x0 has {b} rows but v has {n}: N must be a multiple of B (N = B * K draws, "
            f"the K draws of a sample consecutive)"
        )
    if x0.dtype != v.dtype:
        raise TypeError(f"x0 must have the dtype of v ({v.dtype}), got {x0.dtype}")
    if x0.device != v.device:
        raise ValueError(f"x0 must be on the device of v ({v.device}), got {x0.device}")
    return n // b


def check_per_draw(name: str, x, n: int, device: torch.device) -> torch.Tensor:
    """A per-draw vector of length n: a tensor [N] (or a Python float broadcast to [N])."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return torch.full((n,), float(x), device=device)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [{n}] or a float, got {type(x).__name__}")
    if x.dim() == 0:
        return x.expand(n)
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}] (one value per draw), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} must be on the device of v ({device}), got {x.device}")
    return x


def check_timesteps(t: torch.Tensor, *, allow_zero: bool = False) -> None:
    check_finite("t", t)
    low_ok = (t >= 0) if allow_zero else (t > 0)
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    require_all(low_ok & (t <= 1), f"t must lie in {interval}", lambda: values_range(t))


def values_range(x: torch.Tensor) -> str:
    """'values in [lo, hi]' for an error message (eager mode only: it reads the data)."""
    return f"values in [{float(x.min()):g}, {float(x.max()):g}]"


def check_choice(name: str, value, allowed: Iterable) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(repr(a) for a in allowed)}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value in (float("inf"), float("-inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return float(value)


def row_count(shape: Sequence[int]) -> int:
    d = 1
    for s in shape[1:]:
        d *= int(s)
    return d

