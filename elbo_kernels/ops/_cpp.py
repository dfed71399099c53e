"""Loader for the C++/CUDA extension (csrc/). Being written: reports not built."""
from ..backends import BackendStatus


def cpu_status() -> BackendStatus:
    return BackendStatus(False, "C++ extension not written yet")


def cuda_status() -> BackendStatus:
    return BackendStatus(False, "CUDA extension not written yet")
