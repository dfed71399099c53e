"""Fused ops, one file each: pure-torch reference, fake kernels, autograd and the
registration of every backend's implementation (ops/<op>.py).

Below them: ``_backends`` (the backend table: status, devices, how to get an op),
``_cpp`` (builds and loads the C++/CUDA extension, csrc/), ``_triton/`` (Triton
kernels and launchers) and ``_base`` (BackendStatus, the accumulation-dtype rule).
Nothing here imports from the rest of elbo_kernels.

Importing the package imports every op file, so each op's fakes and autograd are
registered before anything loads the C++ extension (triton is not imported).
"""

from . import noise, noising, residual_sums, sde_step  # noqa: F401
