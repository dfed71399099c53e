"""The CUDA toolkit for the extension's CUDA build: where it is, which architectures, why a build failed.

torch's builder guesses CUDA_HOME from the nvcc on PATH and reads the architectures from a
visible GPU. Both guesses fail on common machines: an nvcc wrapper script outside the toolkit
(the link then fails with ``cannot find -lcudart``) and a GPU-less build host ("list index
out of range"). This module finds the toolkit robustly, defaults the architectures, and turns
a failed build's output into its cause and fix.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

DEFAULT_ARCH_LIST = "8.0;9.0"  # A100, H100/H200


def _is_toolkit(home: Path) -> bool:
    """A CUDA toolkit root: bin/nvcc and the CUDA runtime the extension links against."""
    libs = [home / "lib64", home / "lib"] + [Path(p) for p in glob.glob(str(home / "targets" / "*" / "lib"))]
    return (home / "bin" / "nvcc").is_file() and any((lib / "libcudart.so").exists() for lib in libs)


def _wrapped_nvcc(path: Path) -> Optional[Path]:
    """The nvcc a wrapper script runs (``exec /opt/cuda-13.0/bin/nvcc "$@"``), if it is one."""
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    match = re.search(rb"(/[^\s'\"]+)/bin/nvcc\b", head)
    return Path(match.group(1).decode()) if match else None


def cuda_home() -> "tuple[Optional[str], str]":
    """(CUDA toolkit root or None, where it came from).

    In order: CUDA_HOME / CUDA_PATH when set (taken as given, so a wrong one
    shows up in the build error rather than being silently replaced); nvcc on
    PATH, resolving symlinks and wrapper scripts to the toolkit they run (torch's
    own guess takes the wrapper's parent directory, which has no libcudart);
    then /usr/local/cuda and /usr/local/cuda-*, newest first.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    on_path = shutil.which("nvcc")
    if on_path:
        nvcc = Path(on_path).resolve()
        for home in (nvcc.parent.parent, _wrapped_nvcc(nvcc)):
            if home is not None and _is_toolkit(home):
                return str(home), f"nvcc on PATH ({on_path})"
    versioned = sorted(glob.glob("/usr/local/cuda-*"), key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    for home in ["/usr/local/cuda"] + versioned[::-1]:
        if _is_toolkit(Path(home)):
            return home, "the usual install location"
    return None, "no CUDA toolkit found (no CUDA_HOME, no nvcc on PATH, nothing in /usr/local/cuda*)"


def nvcc() -> Optional[str]:
    home, _ = cuda_home()
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def explain_cuda_build_failure(message: str, home: Optional[str]) -> str:
    """The likely cause of a failed CUDA build and its fix, from the builder's output ('' if unknown)."""
    if "cannot find -lcudart" in message or "cannot find -lcuda" in message:
        return (f"the linker found no libcudart under CUDA_HOME={home}: set CUDA_HOME to the CUDA toolkit "
                "root (the directory holding bin/nvcc and lib64/libcudart.so)")
    if "list index out of range" in message or "get_device_capability" in message:
        return ("no GPU is visible to read the architecture from: set TORCH_CUDA_ARCH_LIST, e.g. "
                f'TORCH_CUDA_ARCH_LIST="{DEFAULT_ARCH_LIST}"')
    if "Unsupported gpu architecture" in message or "unsupported gpu architecture" in message.lower():
        return ("this nvcc does not support an architecture in TORCH_CUDA_ARCH_LIST="
                f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '(unset)')}: drop it or use a newer CUDA toolkit")
    if "mismatches the version that was used to compile" in message:
        return ("the CUDA toolkit's version differs from the one torch was built with: point CUDA_HOME at a "
                f"toolkit of CUDA {torch.version.cuda}")
    if "nvcc" in message and ("No such file" in message or "not found" in message):
        return f"nvcc was not found under CUDA_HOME={home}: set CUDA_HOME to the CUDA toolkit root"
    return ""


class cuda_build_env:
    """CUDA_HOME and TORCH_CUDA_ARCH_LIST for one build; says what it chose, restores on exit.

    torch reads CUDA_HOME once, at import of torch.utils.cpp_extension, and
    reads the arch list from a visible GPU when TORCH_CUDA_ARCH_LIST is unset
    (a GPU-less build host then fails with "list index out of range").
    """

    def __enter__(self):
        from torch.utils import cpp_extension

        self.home, where = cuda_home()
        self.saved = (cpp_extension.CUDA_HOME, os.environ.get("CUDA_HOME"), os.environ.get("TORCH_CUDA_ARCH_LIST"))
        self.notes = [f"CUDA_HOME={self.home} (from {where})"]
        if self.home:
            cpp_extension.CUDA_HOME = self.home
            os.environ["CUDA_HOME"] = self.home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
            self.notes.append(f'TORCH_CUDA_ARCH_LIST="{DEFAULT_ARCH_LIST}" (unset, and no GPU to read it from)')
        else:
            arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or "the visible GPUs"
            self.notes.append(f"architectures: {arch}")
        return self

    def __exit__(self, *exc):
        from torch.utils import cpp_extension

        cpp_extension.CUDA_HOME = self.saved[0]
        for name, value in (("CUDA_HOME", self.saved[1]), ("TORCH_CUDA_ARCH_LIST", self.saved[2])):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return False
