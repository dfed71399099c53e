"""The bottom of the package: what every op file and backend module of ops/ shares.

- :class:`BackendStatus`, the record of whether a backend is usable here and why (not);
- :func:`accumulation_dtype`, the one precision rule of every op: sums, scalars and
  arithmetic are float64 for float64 inputs and float32 for everything else
  (csrc/elbo_ops.h ``acc_of`` is the same rule for the C++ and CUDA kernels);
- :func:`draws_per_sample`, K of docs/design.md section 3: N = B K draws, the K
  draws of a sample being consecutive rows that read x0 row n // K;
- :func:`check_choice`, the "unknown name" error of every name argument;
- :func:`on_cpp_load`, how an op file attaches the fake kernel and autograd of its
  C++/CUDA op, which exists only once ops/_cpp.py has loaded the extension.

It imports only the standard library and torch, so any module of ops/ can import it
and nothing here points back up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List

import torch


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend is usable here; ``reason`` says why not (or what was built)."""

    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for float32 / float16 / bfloat16 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def draws_per_sample(num_draws: int, x0: torch.Tensor) -> int:
    """K = N / B for N draws of the B samples in x0 (shapes validated by the caller)."""
    return num_draws // x0.shape[0]


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raises ValueError naming ``name`` when ``value`` is not one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(repr(a) for a in allowed)}")


# Registrations waiting for the C++ extension's ops to exist (on_cpp_load), and whether they do.
_cpp_registrations: List[Callable[[], None]] = []
_cpp_ops_exist = False


def on_cpp_load(register: Callable[[], None]) -> None:
    """Run ``register`` (an op file's registration of its C++ op's fake kernel and autograd) once
    the extension's ops exist: now if ops/_cpp.py has loaded it, else right after it does."""
    if _cpp_ops_exist:
        register()
    else:
        _cpp_registrations.append(register)


def cpp_ops_loaded() -> None:
    """Called by ops/_cpp.py (under its lock) once the extension's ops exist: runs the registrations."""
    global _cpp_ops_exist
    _cpp_ops_exist = True
    while _cpp_registrations:
        _cpp_registrations.pop(0)()
