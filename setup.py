"""setuptools shim; metadata lives in pyproject.toml.

The C++ extension is not compiled here: it is built on first use and cached
(elbo_kernels/ops/_cpp.py), so installing needs no compiler and no torch at
build time.
"""
from setuptools import setup

setup()
