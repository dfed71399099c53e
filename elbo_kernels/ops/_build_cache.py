"""Where the C++/CUDA extension is built and found: one directory per source content and toolchain.

torch's JIT builder keys its cache directory by the extension's name alone, so every
checkout and virtual environment on a machine shared one directory and rebuilt it in
turn: a different source path, a different compiler flag order or another ninja (which
hashes build commands differently in its log) each force a full rebuild. Here the
directory name carries a hash of everything the binary depends on:

    abi key   the source files' contents, the compiler flags, torch's version (and CUDA's),
              the Python version and the platform: what makes a binary loadable
    build key the abi key plus the C++ compiler's, nvcc's and ninja's identity

and the sources are copied into the directory, so that the build commands, and ninja's
view of them, are byte-identical whichever checkout asked for the build. A directory
with its ``COMPLETE`` marker is loaded without running the builder at all.

torch's builder guards a directory with a ``lock`` file that it creates and deletes; a builder
killed mid-compile (SIGKILL, a node going down) leaves it, and every later process waits for it
forever. So each build here first takes an exclusive flock on ``builder.lock`` (the kernel releases
it when its holder dies, however it dies): holding it proves no builder is alive, and a ``lock``
file still present is stale -- removed, with one line on stderr, and the build runs again. A
process that finds a live builder says so in one line and waits for it (one build's time).

An ahead-of-time build (setup.py with ``ELBO_KERNELS_BUILD_AT_INSTALL=1``, or
``python -m elbo_kernels.ops._cpp --prebuild DIR``) writes the same layout into the
package's ``_prebuilt/`` directory under the abi key: a machine that only runs the
package needs no compiler to use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import socket
import time
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import torch

MARKER = "COMPLETE"
BUILDER_LOCK = "builder.lock"  # ours: flock-ed by the live builder
TORCH_LOCK = "lock"  # torch's FileBaton: left behind by a killed builder
PREBUILT = Path(__file__).resolve().parents[1] / "_prebuilt"


@functools.lru_cache(maxsize=None)
def tool_identity(command: str) -> str:
    """'<resolved path>: <first line of --version>' for a compiler or ninja, or why it is missing."""
    path = shutil.which(command)
    if path is None:
        return f"{command}: not found"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        first = (out.stdout or out.stderr).strip().splitlines()
        return f"{os.path.realpath(path)}: {first[0] if first else 'no version output'}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path}: --version failed ({type(exc).__name__})"


def _digest(parts: Dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def abi_parts(sources: Sequence[Path], flags: Sequence[str]) -> Dict[str, str]:
    """What a built binary depends on to load and run correctly (no compiler: see build_parts)."""
    content = hashlib.sha256()
    for source in sorted(sources, key=lambda p: p.name):
        content.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return {
        "sources": content.hexdigest(),
        "flags": " ".join(flags),
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "cxx11_abi": str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
        "python": f"{sys.implementation.cache_tag} {platform.python_version()}",
        "platform": sysconfig.get_platform(),
    }


def build_parts(sources: Sequence[Path], flags: Sequence[str], nvcc: Optional[str]) -> Dict[str, str]:
    """abi_parts plus the toolchain that compiles it: the C++ compiler torch will call ($CXX or c++),
    nvcc when CUDA sources are built, and ninja."""
    parts = abi_parts(sources, flags)
    parts["cxx"] = tool_identity(os.environ.get("CXX", "c++"))
    parts["ninja"] = tool_identity("ninja")
    if nvcc:
        parts["nvcc"] = tool_identity(nvcc)
    return parts


def cache_root() -> Path:
    """$TORCH_EXTENSIONS_DIR, else torch's default extensions cache (~/.cache/torch_extensions/...)."""
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def build_directory(name: str, parts: Dict[str, str], root: Optional[Path] = None) -> Path:
    return (root or cache_root()) / f"{name}-{_digest(parts)}"


def library_path(directory: Path, name: str) -> Path:
    suffix = ".pyd" if sys.platform == "win32" else ".so"
    return directory / f"{name}{suffix}"


def is_complete(directory: Path, name: str) -> bool:
    return (directory / MARKER).is_file() and library_path(directory, name).is_file()


def stage_sources(sources: Sequence[Path], directory: Path) -> list:
    """Copy the sources into ``directory/src``, leaving identical files (and their mtimes) alone,
    so that ninja sees the same inputs and commands from every checkout."""
    target = directory / "src"
    target.mkdir(parents=True, exist_ok=True)
    staged = []
    for source in sources:
        copy = target / source.name
        data = source.read_bytes()
        if not copy.is_file() or copy.read_bytes() != data:
            tmp = copy.with_suffix(copy.suffix + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, copy)
        staged.append(copy)
    return staged


def mark_complete(directory: Path, parts: Dict[str, str]) -> None:
    tmp = directory / (MARKER + ".tmp")
    tmp.write_text(json.dumps(parts, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, directory / MARKER)  # atomic: a concurrent reader sees no marker or a whole one


def prebuilt_directory(name: str, parts: Dict[str, str], root: Optional[Path] = None) -> Path:
    return (root or PREBUILT) / f"{name}-{_digest(parts)}"


@contextlib.contextmanager
def exclusive_build(directory: Path) -> Iterator[None]:
    """Be the only builder of ``directory``: wait (saying so) for a live one, and remove torch's ``lock``
    file when the builder that left it is dead (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / BUILDER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            print(f"elbo_kernels: waiting for the build in progress in {directory} ({holder}) ...", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        stale = directory / TORCH_LOCK
        if stale.exists():
            age = time.time() - stale.stat().st_mtime
            stale.unlink(missing_ok=True)
            print(f"elbo_kernels: removed the stale build lock {stale} ({age:.0f} s old; no builder is alive: the "
                  f"one that left it was killed); building again", file=sys.stderr, flush=True)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock
