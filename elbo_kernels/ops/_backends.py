"""The backend table: one record per backend, read by ``resolve_backend``, ``fused_op`` and noise.

Backends:
  torch   the pure-PyTorch reference; always usable; the oracle in tests.
  cpu     the C++ extension (csrc/), built on first use and cached.
  cuda    the same extension's CUDA kernels, where a CUDA torch and nvcc exist.
  triton  Triton kernels for CUDA tensors (CPU tensors under TRITON_INTERPRET=1).

Each record says whether the backend is usable here and why (``status``), which
devices' tensors it runs, whether ``"auto"`` picks it on a device, and how to get
an op: ``load()`` builds / imports what its ops need, then the op is
``torch.ops.elbo_kernels.<name><op_suffix>``. The torch backend has no fused ops
(``op_suffix`` None): the op files call their reference for it.

The public names (``BACKENDS``, ``BackendStatus``, ``available_backends``,
``resolve_backend``) are re-exported by ``elbo_kernels.backends``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from . import _triton
from ._base import BackendStatus, check_choice

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")


@dataclass(frozen=True)
class Backend:
    """One row of the backend table."""

    name: str
    status: Callable[[], BackendStatus]  # usable here? builds the C++ extension on the first call
    devices: Tuple[str, ...]  # device types whose tensors it runs; () = any
    auto_on: Tuple[str, ...]  # device types on which "auto" picks it (in BACKEND_TABLE's order)
    load: Callable[[], None]  # makes its ops callable (build / load / import); idempotent
    op_suffix: Optional[str]  # the op is torch.ops.elbo_kernels.<name><op_suffix>; None: no fused ops
    device_error: Callable[[torch.device], str] = lambda device: ""  # a further device condition


def _torch_status() -> BackendStatus:
    return BackendStatus(True, f"torch {torch.__version__}")


def _nothing_to_load() -> None:
    return None


# ops/_cpp.py is imported on the first question about the C++ backends, not with the package: the
# package imports every op file, and `python -m elbo_kernels.ops._cpp` must find _cpp not yet imported.
def _cpu_status() -> BackendStatus:
    from . import _cpp

    return _cpp.cpu_status()


def _cuda_status() -> BackendStatus:
    from . import _cpp

    return _cpp.cuda_status()


def _load_cpp() -> None:
    from . import _cpp

    _cpp.load()


def _load_triton_kernels() -> None:
    """Imports triton and decorates every Triton kernel (idempotent)."""
    from ._triton import noise, noising, residual_sums, sde_step  # noqa: F401


def _triton_device_error(device: torch.device) -> str:
    if device.type == "cpu" and not _triton.interpreting():
        return "backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1"
    return ""


# In "auto"'s order of preference; available_backends() lists them in BACKENDS' order.
BACKEND_TABLE = {
    "triton": Backend("triton", _triton.status, ("cuda", "cpu"), ("cuda",), _load_triton_kernels, "_triton",
                      _triton_device_error),
    "cuda": Backend("cuda", _cuda_status, ("cuda",), ("cuda",), _load_cpp, ""),
    "cpu": Backend("cpu", _cpu_status, ("cpu",), ("cpu",), _load_cpp, ""),
    "torch": Backend("torch", _torch_status, (), (), _nothing_to_load, None),
}
CONCRETE_BACKENDS = tuple(name for name in BACKENDS if name in BACKEND_TABLE)  # torch, cpu, cuda, triton


def available_backends() -> dict:
    """Map backend name -> :class:`BackendStatus` (truthy when usable here).

    Building the C++ extension is attempted on the first call (and cached on
    disk), so the first call may take a minute.
    """
    return {name: BACKEND_TABLE[name].status() for name in CONCRETE_BACKENDS}


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn a user's backend name into a concrete usable backend for ``device``.

    A fused backend returned here is loaded: its ops are registered with the torch dispatcher.
    Raises ValueError for an unknown name, or for a named backend that cannot
    run tensors on ``device`` here (the message says why).
    """
    resolved = _resolve(backend, device)
    BACKEND_TABLE[resolved].load()
    return resolved


# torch.compile runs resolve_backend once, eagerly, while it traces (its result, a string, becomes a
# constant of the graph): so the C++ extension is built or loaded, and the Triton kernels imported,
# before the trace reaches the op, also when compiling before any eager call. The mark is what
# torch.compiler.assume_constant_result sets (torch/_dynamo/decorators.py); calling that would import
# torch._dynamo at import time, 2-3 s that `elbo-kernels --help` and every script importing the
# library would pay. tests/test_compile_public_api.py fails if the mark stops working.
resolve_backend._dynamo_marked_constant = True


def _resolve(backend: str, device: torch.device) -> str:
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        for record in BACKEND_TABLE.values():
            if device.type in record.auto_on and record.status():
                return record.name
        return "torch"
    record = BACKEND_TABLE[backend]
    status = record.status()
    if not status:
        raise ValueError(f"backend {backend!r} is not usable here: {status.reason}")
    if record.devices and device.type not in record.devices:
        raise ValueError(
            f"backend {backend!r} runs tensors on {' or '.join(record.devices)}, but the inputs are on {device}"
        )
    error = record.device_error(device)
    if error:
        raise ValueError(error)
    return backend


def load_backend(backend: str) -> bool:
    """Build or load the C++ extension ("cpu" / "cuda"), or import the Triton kernels ("triton")."""
    BACKEND_TABLE[backend].load()
    return True


# Marked as resolve_backend is (see its comment above): torch.compile runs it eagerly
# while tracing instead of tracing the build, its lock and the import machinery.
load_backend._dynamo_marked_constant = True


def fused_op(name: str, backend: str):
    """The registered op behind ``name`` on a concrete ``backend``, its backend loaded; None for "torch".

    ``torch.ops.elbo_kernels.<name>`` for "cpu" / "cuda" (the C++ extension, built on
    first use), ``torch.ops.elbo_kernels.<name>_triton`` for "triton" (registered by
    ops/<name>.py). Raises ValueError for a name that is not a concrete backend.
    """
    record = BACKEND_TABLE.get(backend)
    if record is None:
        raise ValueError(
            f"unknown backend {backend!r} for {name}; expected one of {', '.join(map(repr, CONCRETE_BACKENDS))}"
        )
    if record.op_suffix is None:
        return None
    load_backend(backend)
    return getattr(torch.ops.elbo_kernels, name + record.op_suffix)
