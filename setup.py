"""setuptools shim; metadata lives in pyproject.toml.

The C++ extension is not compiled here: it is built on first use and cached
(elbo_kernels/ops/_cpp.py), so installing needs no compiler and no torch at
build time. What this file does add: the C++/CUDA sources in the top-level
csrc/ are shipped inside the package as elbo_kernels/csrc (wheel builds) and
in the source distribution, so a non-editable install can still build them.
"""
import shutil
from pathlib import Path

from setuptools import setup
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


class BuildPyWithCsrc(build_py):
    """build_py that also copies csrc/ into the built package as elbo_kernels/csrc."""

    def run(self):
        super().run()
        _copy_csrc(Path(self.build_lib) / "elbo_kernels" / "csrc")


class SdistWithCsrc(sdist):
    """sdist that also carries the top-level csrc/."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        _copy_csrc(Path(base_dir) / "csrc")


setup(cmdclass={"build_py": BuildPyWithCsrc, "sdist": SdistWithCsrc})
