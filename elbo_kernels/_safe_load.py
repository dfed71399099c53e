"""Loading what comes from outside without running its code: checkpoint files and reward-server answers.

A pickle is a program: unpickling calls whatever functions it names, so a checkpoint file or an
HTTP response built by someone else can run any command in the trainer. A hash in a checkpoint's
COMPLETE marker proves the files are the ones written next to it, not who wrote them (checkpoints
are shared on clusters and downloaded). So, as PyTorch (``weights_only=True`` by default since 2.6),
diffusers and safetensors do:

- checkpoint files are read with :func:`load_checkpoint_file`: ``torch.load(..., weights_only=True)``
  (tensors, numbers, strings, containers) plus numpy arrays, which older ``rng.pt`` files hold;
- FlowGRPO's pickle wire format is decoded with :func:`loads_plain`, an unpickler that builds only
  dicts, lists, tuples, sets, numbers, strings, bytes and numpy arrays / scalars.

Anything else is refused with :class:`UnsafePickleError`, one line naming the callable the data asked
for. The only way around it is an explicit opt-in, ``ELBO_KERNELS_TRUST_PICKLES=1`` in the
environment, for files and servers you control; it warns each time it is used.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

TRUST_ENV = "ELBO_KERNELS_TRUST_PICKLES"
PLAIN_DATA = "dicts, lists, tuples, numbers, strings, bytes, numpy arrays and scalars"

# The callables a pickle of plain data (protocols 0-5, numpy 1.x or 2.x) names; each only builds a value.
_ALLOWED = {
    ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("__builtin__", "complex"), ("__builtin__", "set"), ("__builtin__", "frozenset"),
    ("__builtin__", "bytearray"), ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """Data from outside asked to call something other than a plain-data constructor (refused, never run)."""


def trusted() -> bool:
    """True when the user opted in to unrestricted unpickling ($ELBO_KERNELS_TRUST_PICKLES=1)."""
    return os.environ.get(TRUST_ENV, "") not in ("", "0")


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to unpickle {self.source}: it asks to call {module}.{name}, and only "
                                f"plain data ({PLAIN_DATA}) is accepted; set {TRUST_ENV}=1 only if you trust "
                                f"its origin")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing to unpickle {self.source}: it holds a persistent reference, and only "
                                f"plain data ({PLAIN_DATA}) is accepted")


def loads_plain(data: bytes, source: str = "the data") -> Any:
    """Unpickle ``data`` building only plain data (see the module docstring); ``source`` names it in errors.

    Raises:
        UnsafePickleError: the pickle names any other callable (nothing it names is called).
        pickle.UnpicklingError, EOFError, ValueError, ...: ``data`` is not a valid pickle.
    """
    if trusted():
        warnings.warn(f"{TRUST_ENV} is set: unpickling {source} without restrictions", stacklevel=2)
        return pickle.loads(data)
    return _PlainUnpickler(io.BytesIO(data), source).load()


def _numpy_globals() -> list:
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` (numpy arrays admitted: older ``rng.pt`` files hold them).

    Raises:
        UnsafePickleError: the file asks for anything else (nothing it names is called); the message
        names the file and the opt-in.
    """
    import torch

    if trusted():
        warnings.warn(f"{TRUST_ENV} is set: loading {path} without weights_only", stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "global" in line), "")
        raise UnsafePickleError(f"refusing to load {path}: it holds more than tensors and plain data "
                                f"({' '.join(first.split())[:200] or 'weights_only=True failed'}); nothing in it "
                                f"was run. Set {TRUST_ENV}=1 only if you trust its origin") from None
