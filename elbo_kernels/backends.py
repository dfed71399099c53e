"""Which kernel backends exist, which are usable here, and which one ``"auto"`` picks.

Backends:
  torch   the pure-PyTorch reference; always usable; the oracle in tests.
  cpu     the C++ extension (csrc/), built on first use and cached.
  cuda    the same extension's CUDA kernels, where a CUDA torch and nvcc exist.
  triton  Triton kernels for CUDA tensors (CPU tensors under TRITON_INTERPRET=1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend is usable here; ``reason`` says why not (or what was built)."""

    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


def available_backends() -> dict:
    """Map backend name -> :class:`BackendStatus` (truthy when usable here).

    Building the C++ extension is attempted on the first call (and cached on
    disk), so the first call may take a minute.
    """
    from .ops import _cpp, _triton

    return {
        "torch": BackendStatus(True, f"torch {torch.__version__}"),
        "cpu": _cpp.cpu_status(),
        "cuda": _cpp.cuda_status(),
        "triton": _triton.status(),
    }


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn a user's backend name into a concrete usable backend for ``device``.

    A fused backend returned here is loaded: its ops are registered with the torch dispatcher.
    Raises ValueError for an unknown name, or for a named backend that cannot
    run tensors on ``device`` here (the message says why).
    """
    resolved = _resolve(backend, device)
    if resolved == "triton":
        from .ops._dispatch import register_triton_ops

        register_triton_ops()
    return resolved


# torch.compile runs resolve_backend once, eagerly, while it traces (its result, a string, becomes a
# constant of the graph): so the C++ extension is built or loaded, and a Triton op module imported
# (which registers its op), before the trace reaches the op, also when compiling before any eager
# call. The mark is what torch.compiler.assume_constant_result sets (torch/_dynamo/decorators.py);
# calling that would import torch._dynamo at import time, 2-3 s that `elbo-kernels --help` and every
# script importing the library would pay. tests/test_compile_public_api.py fails if the mark stops working.
resolve_backend._dynamo_marked_constant = True


def _resolve(backend: str, device: torch.device) -> str:
    from ._validation import check_choice
    from .ops import _cpp, _triton

    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        if device.type == "cuda":
            if _triton.status():
                return "triton"
            if _cpp.cuda_status():
                return "cuda"
            return "torch"
        if device.type == "cpu" and _cpp.cpu_status():
            return "cpu"
        return "torch"
    if backend == "torch":
        return backend
    status = {"cpu": _cpp.cpu_status, "cuda": _cpp.cuda_status, "triton": _triton.status}[backend]()
    if not status:
        raise ValueError(f"backend {backend!r} is not usable here: {status.reason}")
    wanted = {"cpu": ("cpu",), "cuda": ("cuda",), "triton": ("cuda", "cpu")}[backend]
    if device.type not in wanted:
        raise ValueError(
            f"backend {backend!r} runs tensors on {' or '.join(wanted)}, but the inputs are on {device}"
        )
    if backend == "triton" and device.type == "cpu" and not _triton.interpreting():
        raise ValueError("backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1")
    return backend
