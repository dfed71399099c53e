"""The registered torch op behind a fused backend, loading (or building) that backend on first use."""

from __future__ import annotations

import importlib

import torch

# Each of these modules of ops/_triton registers its op with the dispatcher when imported.
TRITON_OP_MODULES = ("residual_sums", "noising", "sde_step", "noise")


def register_triton_ops() -> None:
    """Import every Triton op module, which registers ``elbo_kernels::<op>_triton`` (imports triton)."""
    for name in TRITON_OP_MODULES:
        importlib.import_module(f"{__package__}._triton.{name}")


def load_backend(name: str, backend: str) -> bool:
    """Build or load the C++ extension ("cpu" / "cuda"), or import the Triton op module ("triton")."""
    if backend in ("cpu", "cuda"):
        from . import _cpp

        _cpp.load()
    elif backend == "triton":
        importlib.import_module(f"{__package__}._triton.{name}")
    else:
        raise ValueError(f"unknown fused backend {backend!r} for {name}; expected 'cpu', 'cuda' or 'triton'")
    return True


# Marked as resolve_backend is (see its comment in backends.py): torch.compile runs it eagerly
# while tracing instead of tracing the build, its lock and the import machinery.
load_backend._dynamo_marked_constant = True


def fused_op(name: str, backend: str):
    """``torch.ops.elbo_kernels.<name>`` for "cpu" / "cuda" (the C++ extension, built on first use),
    ``torch.ops.elbo_kernels.<name>_triton`` for "triton" (registered by ops/_triton/<name>.py)."""
    load_backend(name, backend)
    return getattr(torch.ops.elbo_kernels, name if backend in ("cpu", "cuda") else f"{name}_triton")
