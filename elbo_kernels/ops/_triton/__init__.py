"""Triton backend: one module of kernels and launchers per fused op.

The ops themselves (``elbo_kernels::<op>_triton``, their fake kernels and
autograd) are registered by ``elbo_kernels/ops/<op>.py``, whose op bodies call
the launchers here. Importing this package does not import triton and queries
no device: the kernel modules (``residual_sums``, ``noising``, ``sde_step``,
``noise``) import triton and decorate their kernels when first imported, which
the backend table's loader (ops/_backends.py) and the op bodies do lazily.
TRITON_INTERPRET=1 must be set before that first import (the decorators read
it), and it then runs the kernels on CPU tensors in the Triton interpreter with
a single autotune config.
"""

from __future__ import annotations

import os

from .._base import BackendStatus


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: kernels run in the interpreter on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def status() -> BackendStatus:
    """Usable when triton imports and a CUDA device exists or TRITON_INTERPRET=1.

    Imports triton (and, outside the interpreter, asks torch whether CUDA is
    available) only when called, never at import.
    """
    try:
        import triton
    except Exception as err:  # ImportError, or a broken install raising anything else
        return BackendStatus(False, f"triton is not importable: {type(err).__name__}: {err}")
    version = getattr(triton, "__version__", "unknown")
    if interpreting():
        return BackendStatus(True, f"triton {version}, interpreter (TRITON_INTERPRET=1, CPU tensors)")
    import torch

    if torch.cuda.is_available():
        return BackendStatus(True, f"triton {version}, compiled for CUDA device {torch.cuda.get_device_name()}")
    return BackendStatus(
        False, f"triton {version} is installed but no CUDA device is available and TRITON_INTERPRET is not 1"
    )

