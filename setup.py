"""setuptools shim; metadata lives in pyproject.toml.

By default the C++ extension is not compiled here: it is built on first use and
cached (elbo_kernels/ops/_cpp.py), so installing needs no compiler and no torch
at build time. What this file does add: the C++/CUDA sources in the top-level
csrc/ are shipped inside the package as elbo_kernels/csrc (wheel builds) and
in the source distribution, so a non-editable install can still build them.

ELBO_KERNELS_BUILD_AT_INSTALL=1 compiles the extension during the install instead
(for images and clusters where the first training step must not compile), into
the package's _prebuilt/ directory, which the loader checks first. It needs torch
in the build environment:

    ELBO_KERNELS_BUILD_AT_INSTALL=1 pip install --no-build-isolation .
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

CSRC = Path(__file__).resolve().parent / "csrc"


def _copy_csrc(target: Path) -> None:
    if not CSRC.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(CSRC.iterdir()):
        if source.is_file():
            shutil.copy2(source, target / source.name)


def _build_at_install() -> bool:
    return os.environ.get("ELBO_KERNELS_BUILD_AT_INSTALL", "").strip().lower() in ("1", "true", "yes", "on")


def _prebuild(target: Path) -> None:
    """Run the package's own builder (python -m elbo_kernels.ops._cpp --prebuild) from this source tree."""
    root = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    try:
        subprocess.run([sys.executable, "-c", "import torch"], check=True, env=env, capture_output=True)
    except subprocess.CalledProcessError:
        raise RuntimeError("ELBO_KERNELS_BUILD_AT_INSTALL=1 needs torch in the build environment: install torch "
                           "first, then pip install --no-build-isolation ...") from None
    subprocess.run([sys.executable, "-m", "elbo_kernels.ops._cpp", "--prebuild", str(target)], check=True,
                   env=env, cwd=str(root))


class BuildPyWithCsrc(build_py):
    """build_py that also copies csrc/ into the built package as elbo_kernels/csrc, and with
    ELBO_KERNELS_BUILD_AT_INSTALL=1 builds the extension into elbo_kernels/_prebuilt."""

    def run(self):
        super().run()
        _copy_csrc(Path(self.build_lib) / "elbo_kernels" / "csrc")
        if _build_at_install():
            # An editable install imports the package from the source tree, so the build goes there.
            package = Path(__file__).resolve().parent if getattr(self, "editable_mode", False) else Path(self.build_lib)
            _prebuild(package / "elbo_kernels" / "_prebuilt")


class SdistWithCsrc(sdist):
    """sdist that also carries the top-level csrc/."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        _copy_csrc(Path(base_dir) / "csrc")


class MaybeBinaryDistribution(Distribution):
    """A wheel that carries a prebuilt library is tagged for this Python and platform, not py3-none-any."""

    def has_ext_modules(self):
        return _build_at_install() or super().has_ext_modules()


setup(cmdclass={"build_py": BuildPyWithCsrc, "sdist": SdistWithCsrc}, distclass=MaybeBinaryDistribution)
