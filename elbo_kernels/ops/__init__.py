"""Fused ops, one file each: pure-torch reference, backend dispatch, autograd.

Backends live beside them: ``_cpp`` loads the C++/CUDA extension (csrc/),
``_triton`` holds the Triton kernels.
"""
