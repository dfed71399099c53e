"""Which kernel backends exist, which are usable here, and which one ``"auto"`` picks.

Backends:
  torch   the pure-PyTorch reference; always usable; the oracle in tests.
  cpu     the C++ extension (csrc/), built on first use and cached.
  cuda    the same extension's CUDA kernels, where a CUDA torch and nvcc exist.
  triton  Triton kernels for CUDA tensors (CPU tensors under TRITON_INTERPRET=1).

The backend table these read lives at the bottom of the package, in
elbo_kernels/ops/_backends.py, so that the ops never import upward; this module
is its public face.
"""

from __future__ import annotations

from .ops._backends import BACKENDS, available_backends, resolve_backend
from .ops._base import BackendStatus

__all__ = ["BACKENDS", "BackendStatus", "available_backends", "resolve_backend"]
