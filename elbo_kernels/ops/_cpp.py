"""Builds and loads the C++/CUDA extension (csrc/) and hands out its ops.

The extension is compiled on first use with ``torch.utils.cpp_extension.load``
(JIT) into a directory of the torch extensions cache (``TORCH_EXTENSIONS_DIR``)
named by a hash of the sources' content and the toolchain (ops/_build_cache.py),
so checkouts and virtual environments never rebuild each other's binary; a build
says so on stderr, a later process loads the cached binary without running the
builder. Sources come from the
repository's top-level ``csrc/`` (editable install) or from the copy that
setup.py ships inside the package (``elbo_kernels/csrc``, wheel install).

The library defines the ``elbo_kernels`` op namespace (``TORCH_LIBRARY`` in
csrc/elbo_ops.cpp) with CPU kernels and, where built, CUDA kernels. Each op file
(ops/<op>.py) adds the op's fake kernel and autograd formula through
``_base.on_cpp_load``; this module runs them once the extension's ops exist, so
``torch.compile(fullgraph=True)`` traces through them.

Environment:
  ELBO_KERNELS_REQUIRE_CPP=1   a failed build raises (also from cpu_status()); CI sets it.
  ELBO_KERNELS_BUILD_CPP=0     neither build nor load the extension (the cpu and cuda
                               backends report themselves disabled; the device check sets
                               it after a failed build so that later steps do not retry it).
  ELBO_KERNELS_BUILD_CUDA=0|1  force the CUDA kernels off / on. Unset: built when torch
                               is a CUDA build and nvcc is found (a GPU is not needed).
  TORCH_CUDA_ARCH_LIST         CUDA architectures (read by torch's builder). Unset and
                               no GPU visible: "8.0;9.0" (A100, H100), said in the status.
  CUDA_HOME                    the CUDA toolkit root. Unset: found from nvcc on PATH
                               (following a wrapper script to the toolkit it runs),
                               CUDA_PATH, or /usr/local/cuda(-*) (``cuda_home()``).
  ELBO_KERNELS_BUILD_AT_INSTALL=1   setup.py builds the extension ahead of time into the
                               package (needs torch in the build environment:
                               pip install --no-build-isolation ...).
  TORCH_EXTENSIONS_DIR, MAX_JOBS, CXX   as for any torch extension.

Command line:
  python -m elbo_kernels.ops._cpp                     build (if needed) and print the status
                                                      (exit 1: no C++ kernels; with --require_cuda,
                                                      exit 2: C++ CPU kernels but no CUDA kernels)
  python -m elbo_kernels.ops._cpp --prebuild DIR      ahead-of-time build into DIR (setup.py uses it)
  python -m elbo_kernels.ops._cpp --compile_cuda_only [-o FILE.o]
      compile csrc/cuda_kernels.cu to an object with nvcc -c against the installed
      torch headers (works with a CPU-only torch; catches CUDA code rot in CI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from . import _base, _build_cache
from ._base import BackendStatus
from ._cuda_toolkit import DEFAULT_ARCH_LIST as _DEFAULT_ARCH_LIST
from ._cuda_toolkit import cuda_build_env as _cuda_build_env
from ._cuda_toolkit import cuda_home, explain_cuda_build_failure
from ._cuda_toolkit import nvcc as _nvcc

NAMESPACE = "elbo_kernels"
CPU_SOURCES = ("elbo_ops.cpp", "cpu_kernels.cpp")
CUDA_SOURCES = ("cuda_kernels.cu",)
HEADERS = ("elbo_math.h", "elbo_ops.h", "cpu_kernels_impl.h")

# -O3 without -march: the JIT cache may be shared by machines with different CPUs
# (see the note at the top of csrc/cpu_kernels.cpp). -fopenmp is what makes
# at::parallel_for (an inline header template) run on torch's intra-op threads.
_CFLAGS = ["-O3", "-ffp-contract=off"]
_OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
# --fmad=false: nvcc contracts a * b + c into one FMA by default, while the CPU
# kernels round every product (-ffp-contract=off) as torch eager does; the ops
# are bound by memory traffic, so exact rounding costs no measurable time and
# CUDA results follow the same per-element arithmetic as the CPU and torch.
_CUDA_CFLAGS = ["-O3", "-lineinfo", "--fmad=false"]

_TAIL_CHARS = 4000
_lock = threading.Lock()


@dataclass(frozen=True)
class _BuildOutcome:
    cpu: BackendStatus
    cuda: BackendStatus
    error: Optional[str] = None  # the full failure message when the CPU build failed


_outcome: Optional[_BuildOutcome] = None


def _env_flag(name: str) -> Optional[bool]:
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def require_cpp() -> bool:
    """True when ELBO_KERNELS_REQUIRE_CPP asks for build failures to raise."""
    return bool(_env_flag("ELBO_KERNELS_REQUIRE_CPP"))


def csrc_dir() -> Optional[Path]:
    """The directory holding the C++ sources: repo-level csrc/, else the packaged copy."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "csrc", here.parents[1] / "csrc"):
        if all((candidate / f).is_file() for f in CPU_SOURCES + HEADERS):
            return candidate
    return None


def _cuda_wanted() -> "tuple[bool, str]":
    """(build the CUDA kernels?, why not)."""
    forced = _env_flag("ELBO_KERNELS_BUILD_CUDA")
    if forced is False:
        return False, "disabled by ELBO_KERNELS_BUILD_CUDA=0"
    if getattr(torch.version, "hip", None):
        return False, f"torch {torch.__version__} is a ROCm build; the CUDA kernels are CUDA-only"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    if forced is None and cuda_home()[0] is None and _nvcc() is None:
        return False, f"nvcc not found: {cuda_home()[1]} (set CUDA_HOME to the CUDA toolkit root)"
    return True, ""


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "...\n" + text[-_TAIL_CHARS:]


def _build(name: str, sources: Sequence[Path], with_cuda: bool) -> "tuple[Path, str]":
    """Load one variant, building it first if needed; returns (its directory, what happened).

    Looked up in order: the package's prebuilt binaries (ahead-of-time build, keyed by
    source content, flags, torch and Python), then the build cache keyed by those and the
    toolchain (ops/_build_cache.py), and only then compiled, with a message on stderr: a
    first build takes about a minute, and a silent minute looks like a hang.
    """
    flags = _flags(with_cuda)
    inputs = list(sources) + [sources[0].parent / h for h in HEADERS]
    abi = _build_cache.abi_parts(inputs, flags)
    prebuilt = _build_cache.prebuilt_directory(name, abi)
    if _build_cache.is_complete(prebuilt, name):
        torch.ops.load_library(str(_build_cache.library_path(prebuilt, name)))
        return prebuilt, "loaded the ahead-of-time build"
    parts = _build_cache.build_parts(inputs, flags, _nvcc() if with_cuda else None)
    directory = _build_cache.build_directory(name, parts)
    if _build_cache.is_complete(directory, name):
        torch.ops.load_library(str(_build_cache.library_path(directory, name)))
        return directory, "loaded from cache"
    what = "C++/CUDA kernels (first use, a few minutes)" if with_cuda else "C++ kernels (first use, about a minute)"
    print(f"elbo_kernels: building the {what} in {directory} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with _progress(directory, [s.name for s in sources]):
        _compile(name, inputs, with_cuda, directory)
    _build_cache.mark_complete(directory, parts)
    print(f"elbo_kernels: built the {name.rpartition('_')[2].upper()} kernels in {time.perf_counter() - start:.0f} s "
          f"(cached: later processes load them)", file=sys.stderr, flush=True)
    return directory, "built"


PROGRESS_SECONDS = 15.0


class _progress:
    """While a build runs, a line on stderr every PROGRESS_SECONDS: how many of the sources have
    an object file yet, and the time so far (a silent minute looks like a hang)."""

    def __init__(self, directory: Path, sources: Sequence[str]):
        self.directory, self.sources = directory, list(sources)
        self.done = threading.Event()
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._report, name="elbo_kernels-build-progress", daemon=True)

    def compiled(self) -> int:
        stems = {Path(s).name.split(".")[0] for s in self.sources}
        found = {p.name.split(".")[0] for p in self.directory.glob("*.o")} if self.directory.is_dir() else set()
        return len(stems & found)

    def _report(self) -> None:
        while not self.done.wait(PROGRESS_SECONDS):
            print(f"elbo_kernels: still building: {self.compiled()} of {len(self.sources)} sources compiled, "
                  f"{time.perf_counter() - self.start:.0f} s so far", file=sys.stderr, flush=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def _flags(with_cuda: bool) -> List[str]:
    return _CFLAGS + _OPENMP + (["cuda:"] + _CUDA_CFLAGS if with_cuda else [])


def _compile(name: str, inputs: Sequence[Path], with_cuda: bool, directory: Path) -> None:
    """torch's JIT builder on copies of the sources inside ``directory`` (identical commands from
    every checkout, so ninja never rebuilds for a path change); loads the result."""
    from torch.utils import cpp_extension

    with _build_cache.exclusive_build(directory):  # a killed builder's lock never hangs this one
        if _build_cache.is_complete(directory, name):  # built by the process this one waited for
            torch.ops.load_library(str(_build_cache.library_path(directory, name)))
            return
        staged = _build_cache.stage_sources(inputs, directory)
        compiled = [s for s in staged if s.name not in HEADERS]
        cpp_extension.load(
            name=name,
            sources=[str(s) for s in compiled],
            extra_cflags=_CFLAGS + _OPENMP,
            extra_ldflags=list(_OPENMP),
            extra_cuda_cflags=_CUDA_CFLAGS if with_cuda else None,
            extra_include_paths=[str(directory / "src")],
            build_directory=str(directory),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )


def prebuild(root: Path) -> List[Path]:
    """Ahead-of-time build of every variant this machine can build, into ``root`` (the package's
    _prebuilt/ at install time) under the abi key; keeps only the library and its marker."""
    src = csrc_dir()
    if src is None:
        raise RuntimeError("C++ sources not found (looked for csrc/ at the repository root and inside the package)")
    variants = [(f"{NAMESPACE}_cpu", CPU_SOURCES, False)]
    if _cuda_wanted()[0]:
        variants.insert(0, (f"{NAMESPACE}_cuda", CPU_SOURCES + CUDA_SOURCES, True))
    built = []
    for name, files, with_cuda in variants:
        inputs = [src / f for f in files + HEADERS]
        abi = _build_cache.abi_parts(inputs, _flags(with_cuda))
        directory = _build_cache.prebuilt_directory(name, abi, Path(root))
        print(f"elbo_kernels: building the {name} kernels ahead of time in {directory} ...", file=sys.stderr,
              flush=True)
        _compile(name, inputs, with_cuda, directory)
        for entry in directory.iterdir():  # ship the library, not objects, ninja files or sources
            if entry != _build_cache.library_path(directory, name):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        _build_cache.mark_complete(directory, abi)
        built.append(directory)
    return built


def _attempt() -> _BuildOutcome:
    if _env_flag("ELBO_KERNELS_BUILD_CPP") is False:
        msg = "disabled by ELBO_KERNELS_BUILD_CPP=0"
        return _BuildOutcome(BackendStatus(False, msg), BackendStatus(False, msg), msg)
    src = csrc_dir()
    if src is None:
        msg = "C++ sources not found (looked for csrc/ at the repository root and inside the package)"
        return _BuildOutcome(BackendStatus(False, msg), BackendStatus(False, msg), msg)
    want_cuda, no_cuda_reason = _cuda_wanted()
    cuda_failure = None
    if want_cuda:
        start = time.perf_counter()
        with _cuda_build_env() as env:
            try:
                path, how = _build(f"{NAMESPACE}_cuda", [src / f for f in CPU_SOURCES + CUDA_SOURCES], True)
            except Exception as exc:  # noqa: BLE001  (compiler errors surface as RuntimeError / OSError)
                message = f"{type(exc).__name__}: {exc}"
                cause = explain_cuda_build_failure(message, env.home)
                cuda_failure = (f"CUDA build from {src} failed ({'; '.join(env.notes)})"
                                + (f"; likely cause: {cause}" if cause else "") + f":\n{_tail(message)}")
            else:
                took = time.perf_counter() - start
                what = f"{how} {path} in {took:.1f} s (sources: {src})"
                return _BuildOutcome(BackendStatus(True, f"C++ CPU kernels {what}"),
                                     BackendStatus(True, f"CUDA kernels (CUDA {torch.version.cuda}; "
                                                         f"{'; '.join(env.notes)}) {what}"))
        if require_cpp():
            return _BuildOutcome(BackendStatus(False, cuda_failure), BackendStatus(False, cuda_failure), cuda_failure)
    start = time.perf_counter()
    try:
        path, how = _build(f"{NAMESPACE}_cpu", [src / f for f in CPU_SOURCES], False)
    except Exception as exc:  # noqa: BLE001
        msg = f"C++ build from {src} failed: {_tail(str(exc))}"
        return _BuildOutcome(BackendStatus(False, msg), BackendStatus(False, cuda_failure or msg), msg)
    took = time.perf_counter() - start
    what = f"{how} {path} in {took:.1f} s (sources: {src})"
    cpu = BackendStatus(True, f"C++ CPU kernels {what}")
    return _BuildOutcome(cpu, BackendStatus(False, cuda_failure or f"CUDA kernels not built: {no_cuda_reason}"))


def _ensure() -> _BuildOutcome:
    global _outcome
    with _lock:
        if _outcome is None:
            if _ops_present():  # loaded by someone else (e.g. torch.ops.load_library)
                _outcome = _BuildOutcome(BackendStatus(True, "C++ kernels already loaded in this process"),
                                         BackendStatus(_has_cuda_kernel(), "CUDA kernels already loaded"
                                                       if _has_cuda_kernel() else "CUDA kernels not loaded"))
            else:
                _outcome = _attempt()
            if _outcome.cpu:
                _base.cpp_ops_loaded()  # the op files' fakes and autograd (_base.on_cpp_load)
        return _outcome


def _ops_present() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::residual_sums", "CPU")
    except RuntimeError:
        return False


def _has_cuda_kernel() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::residual_sums", "CUDA")
    except RuntimeError:
        return False


def load() -> None:
    """Build (first call; cached on disk) and load the extension; idempotent.

    Raises RuntimeError with the tail of the compiler output when the build fails.
    """
    outcome = _ensure()
    if not outcome.cpu:
        raise RuntimeError(f"elbo_kernels C++ extension unavailable: {outcome.error or outcome.cpu.reason}")


def cpu_status() -> BackendStatus:
    """Whether the C++ CPU kernels are usable; builds them on the first call.

    With ELBO_KERNELS_REQUIRE_CPP=1 a failed build raises RuntimeError instead.
    """
    outcome = _ensure()
    if not outcome.cpu and require_cpp():
        raise RuntimeError(f"ELBO_KERNELS_REQUIRE_CPP is set and the C++ build failed: {outcome.cpu.reason}")
    return outcome.cpu


def cuda_status() -> BackendStatus:
    """Whether the CUDA kernels were built and loaded; builds on the first call.

    With ELBO_KERNELS_REQUIRE_CPP=1, a CUDA build that was attempted and failed raises.
    """
    outcome = _ensure()
    attempted = _cuda_wanted()[0]
    if not outcome.cuda and attempted and require_cpp():
        raise RuntimeError(f"ELBO_KERNELS_REQUIRE_CPP is set and the CUDA build failed: {outcome.cuda.reason}")
    return outcome.cuda


# ---------------------------------------------------------------------------
# Compile-only check of the CUDA translation unit (no GPU, CPU torch is enough).
# ---------------------------------------------------------------------------


def _arch_flags() -> List[str]:
    """nvcc -gencode flags from TORCH_CUDA_ARCH_LIST (default: 8.0 and 9.0)."""
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or _DEFAULT_ARCH_LIST.replace(",", ";").replace(" ", ";")
    flags = []
    for arch in filter(None, arch_list.split(";")):
        ptx = arch.endswith("+PTX")
        num = arch.replace("+PTX", "").replace(".", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    return flags


def compile_cuda_only(output: Optional[Path] = None, nvcc: Optional[str] = None) -> Path:
    """Compile csrc/cuda_kernels.cu to an object file with nvcc -c; returns its path.

    Uses the installed torch's headers and the same defines torch's extension
    builder passes, so it verifies that the CUDA kernels and their
    TORCH_LIBRARY_IMPL registration compile (nothing is linked or run).
    Raises RuntimeError with nvcc's output when compilation fails.
    """
    from torch.utils import cpp_extension

    src = csrc_dir()
    if src is None:
        raise RuntimeError("C++ sources not found")
    nvcc = nvcc or _nvcc()
    if nvcc is None or not (Path(nvcc).is_file() or shutil.which(nvcc)):
        raise RuntimeError(f"nvcc not found ({nvcc or 'set CUDA_HOME or put nvcc on PATH'})")
    output = Path(output) if output else Path(tempfile.gettempdir()) / "elbo_kernels_cuda_kernels.o"
    with tempfile.TemporaryDirectory(prefix="elbo_kernels_cuda_shim_") as shim:
        include_dirs = cpp_extension.include_paths() + [str(src)]
        macros = Path(include_dirs[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        if not macros.is_file():
            # A CPU-only torch ships c10/cuda headers but not this CMake-generated one;
            # its content in CUDA builds of torch is this single define.
            shim_file = Path(shim) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
            shim_file.parent.mkdir(parents=True)
            shim_file.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
            include_dirs.append(shim)
        return _run_nvcc(nvcc, src, output, include_dirs)


def _run_nvcc(nvcc: str, src: Path, output: Path, include_dirs: List[str]) -> Path:
    includes = []
    for path in include_dirs:
        includes += ["-I", path]
    cmd = [
        nvcc, "-c", str(src / "cuda_kernels.cu"), "-o", str(output),
        "-std=c++20", *_CUDA_CFLAGS, "-Xcompiler", "-fPIC",
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
        "--expt-relaxed-constexpr", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-DTORCH_EXTENSION_NAME=elbo_kernels_cuda_compile_check", "-DTORCH_API_INCLUDE_EXTENSION_H",
    ] + includes + _arch_flags()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{_tail(proc.stdout + proc.stderr)}")
    if proc.stderr.strip():  # warnings: shown, not fatal
        print(_tail(proc.stderr), file=sys.stderr)
    return output


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elbo_kernels.ops._cpp", description=__doc__.split("\n")[0])
    # ops/ imports nothing above it (elbo_kernels/_argparse.py): the dashed spelling is listed instead.
    parser.add_argument("--compile_cuda_only", "--compile-cuda-only", action="store_true",
                        help="only compile csrc/cuda_kernels.cu with nvcc -c (no GPU or CUDA torch needed)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="object file for --compile_cuda_only")
    parser.add_argument("--prebuild", type=Path, default=None, metavar="DIR",
                        help="build every variant ahead of time into DIR (the package's _prebuilt/ at install)")
    parser.add_argument("--require_cuda", "--require-cuda", action="store_true",
                        help="exit 2 when the C++ CPU kernels load but the CUDA kernels do not")
    args = parser.parse_args(argv)
    if args.prebuild is not None:
        for directory in prebuild(args.prebuild):
            print(f"built {directory}")
        return 0
    if args.compile_cuda_only:
        start = time.perf_counter()
        try:
            out = compile_cuda_only(args.output)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"compiled {out} in {time.perf_counter() - start:.1f} s")
        return 0
    print("cpu: ", cpu_status())
    print("cuda:", cuda_status())
    if not cpu_status():
        return 1
    return 2 if args.require_cuda and not cuda_status() else 0


if __name__ == "__main__":
    sys.exit(main())
