"""The registered torch op behind a fused backend, loading (or building) that backend on first use."""

from __future__ import annotations

import importlib

import torch


def fused_op(name: str, backend: str):
    """``torch.ops.elbo_kernels.<name>`` for "cpu" / "cuda" (the C++ extension, built on first use),
    ``torch.ops.elbo_kernels.<name>_triton`` for "triton" (registered by ops/_triton/<name>.py)."""
    if backend in ("cpu", "cuda"):
        from . import _cpp

        _cpp.load()
        return getattr(torch.ops.elbo_kernels, name)
    if backend == "triton":
        importlib.import_module(f"{__package__}._triton.{name}")
        return getattr(torch.ops.elbo_kernels, f"{name}_triton")
    raise ValueError(f"unknown fused backend {backend!r} for {name}; expected 'cpu', 'cuda' or 'triton'")
