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


def fused_op(name: str, backend: str):
    """``torch.ops.elbo_kernels.<name>`` for "cpu" / "cuda" (the C++ extension, built on first use),
    ``torch.ops.elbo_kernels.<name>_triton`` for "triton" (registered by ops/_triton/<name>.py).

    While torch.compile traces, the backend was already loaded by ``resolve_backend`` (which the
    compiler runs eagerly), and loading here would put a lock and a build in the traced code.
    """
    if backend in ("cpu", "cuda"):
        if not torch.compiler.is_compiling():
            from . import _cpp

            _cpp.load()
        return getattr(torch.ops.elbo_kernels, name)
    if backend == "triton":
        if not torch.compiler.is_compiling():
            importlib.import_module(f"{__package__}._triton.{name}")
        return getattr(torch.ops.elbo_kernels, f"{name}_triton")
    raise ValueError(f"unknown fused backend {backend!r} for {name}; expected 'cpu', 'cuda' or 'triton'")
