"""Where the C++ extension is built: one directory per source content and toolchain, a visible
build, an honest "loaded from cache", and the ahead-of-time build at install."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from elbo_kernels.ops import _build_cache, _cpp

SOURCES = _cpp.CPU_SOURCES + _cpp.HEADERS
NAME = "elbo_kernels_cpu"


def _checkout(root: Path) -> list:
    """A copy of the C++ sources somewhere else on disk, as another checkout would have them."""
    root.mkdir(parents=True)
    for name in SOURCES:
        shutil.copy(_cpp.csrc_dir() / name, root / name)
    return [root / name for name in SOURCES]


def _fake_compiler(path: Path, version: str) -> Path:
    path.write_text(f'#!/bin/sh\necho "{version}"\n')
    path.chmod(0o755)
    return path


def _directory(sources, tmp_path):
    return _build_cache.build_directory(NAME, _build_cache.build_parts(sources, ["-O3"], None), tmp_path / "cache")


def test_two_checkouts_with_the_same_sources_share_one_build_directory(tmp_path):
    first, second = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    assert _directory(first, tmp_path) == _directory(second, tmp_path)


def test_a_changed_source_byte_gets_its_own_build_directory(tmp_path):
    first, second = _checkout(tmp_path / "a"), _checkout(tmp_path / "b")
    header = second[-1]
    header.write_bytes(header.read_bytes() + b"\n// changed\n")
    assert _directory(first, tmp_path) != _directory(second, tmp_path)


def test_another_compiler_gets_its_own_build_directory(tmp_path, monkeypatch):
    sources = _checkout(tmp_path / "a")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("CXX", str(_fake_compiler(bin_dir / "cxx-one", "g++ (GCC) 12.2.0")))
    _build_cache.tool_identity.cache_clear()
    one = _directory(sources, tmp_path)
    monkeypatch.setenv("CXX", str(_fake_compiler(bin_dir / "cxx-two", "g++ (GCC) 13.1.0")))
    two = _directory(sources, tmp_path)
    _build_cache.tool_identity.cache_clear()
    assert one != two


def test_build_key_names_torch_python_compiler_and_ninja(tmp_path):
    parts = _build_cache.build_parts(_checkout(tmp_path / "a"), ["-O3"], None)
    assert parts["torch"] == torch.__version__
    assert sys.implementation.cache_tag in parts["python"]
    assert {"cxx", "ninja", "sources", "flags"} <= set(parts)


def test_staging_leaves_identical_sources_untouched(tmp_path):
    """ninja decides by mtime: re-staging the same content from another checkout must not touch the copies."""
    build = tmp_path / "build"
    staged = _build_cache.stage_sources(_checkout(tmp_path / "a"), build)
    before = [p.stat().st_mtime_ns for p in staged]
    again = _build_cache.stage_sources(_checkout(tmp_path / "b"), build)
    assert again == staged and [p.stat().st_mtime_ns for p in again] == before


class _FakeBuilder:
    """Stands in for the compiler (writes a library file) and for load_library (records the path)."""

    def __init__(self, monkeypatch):
        self.compiled, self.loaded = [], []
        monkeypatch.setattr(_cpp, "_compile", self.compile)
        monkeypatch.setattr(torch.ops, "load_library", self.loaded.append)

    def compile(self, name, inputs, with_cuda, directory):
        _build_cache.stage_sources(inputs, directory)
        _build_cache.library_path(directory, name).write_bytes(b"not a real library")
        _build_cache.library_path(directory, name).with_suffix(".o").write_bytes(b"object file")
        self.compiled.append(directory)


def test_first_build_says_so_and_a_second_load_says_loaded_from_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    builder = _FakeBuilder(monkeypatch)
    sources = [_cpp.csrc_dir() / name for name in _cpp.CPU_SOURCES]
    directory, how = _cpp._build(NAME, sources, False)
    assert how == "built" and builder.compiled == [directory]
    assert "building the C++ kernels (first use, about a minute)" in capsys.readouterr().err
    assert directory.parent == tmp_path / "ext"
    directory_again, how_again = _cpp._build(NAME, sources, False)
    assert (directory_again, how_again) == (directory, "loaded from cache")
    assert builder.compiled == [directory] and "building" not in capsys.readouterr().err
    assert builder.loaded == [str(_build_cache.library_path(directory, NAME))]


def test_a_build_reports_progress_while_it_runs_and_its_time_when_done(tmp_path, monkeypatch, capsys):
    import time

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(_cpp, "PROGRESS_SECONDS", 0.05)
    builder = _FakeBuilder(monkeypatch)

    def slow_compile(name, inputs, with_cuda, directory):  # one object file at a time, as ninja with -j1
        _build_cache.stage_sources(inputs, directory)
        for source in _cpp.CPU_SOURCES:
            time.sleep(0.4)
            (directory / (source.split(".")[0] + ".o")).write_bytes(b"object file")
        time.sleep(0.4)
        builder.compile(name, inputs, with_cuda, directory)

    monkeypatch.setattr(_cpp, "_compile", slow_compile)
    _cpp._build(NAME, [_cpp.csrc_dir() / name for name in _cpp.CPU_SOURCES], False)
    err = capsys.readouterr().err
    for done in range(len(_cpp.CPU_SOURCES) + 1):
        assert f"still building: {done} of {len(_cpp.CPU_SOURCES)} sources compiled" in err, err
    assert err.strip().splitlines()[-1].startswith("elbo_kernels: built the CPU kernels in ")


def test_an_interrupted_build_is_not_taken_for_a_complete_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    builder = _FakeBuilder(monkeypatch)
    sources = [_cpp.csrc_dir() / name for name in _cpp.CPU_SOURCES]
    directory, _ = _cpp._build(NAME, sources, False)
    (directory / _build_cache.MARKER).unlink()  # as if killed between linking and the marker
    _, how = _cpp._build(NAME, sources, False)
    assert how == "built" and len(builder.compiled) == 2


def test_ahead_of_time_build_is_found_first_and_ships_only_the_library(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("ELBO_KERNELS_BUILD_CUDA", "0")
    monkeypatch.setattr(_build_cache, "PREBUILT", tmp_path / "package" / "_prebuilt")
    builder = _FakeBuilder(monkeypatch)
    (directory,) = _cpp.prebuild(tmp_path / "package" / "_prebuilt")
    assert sorted(p.name for p in directory.iterdir()) == sorted([_build_cache.MARKER, f"{NAME}.so"])
    # No compiler at run time: the prebuilt library is found before the toolchain is even asked.
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    _build_cache.tool_identity.cache_clear()
    sources = [_cpp.csrc_dir() / name for name in _cpp.CPU_SOURCES]
    found, how = _cpp._build(NAME, sources, False)
    _build_cache.tool_identity.cache_clear()
    assert (found, how) == (directory, "loaded the ahead-of-time build") and len(builder.compiled) == 1


def test_a_new_process_loads_the_cached_build_without_building():
    """The real extension: once built (by this test session), another process only loads it."""
    _cpp.load()
    script = textwrap.dedent(
        """
        from elbo_kernels.ops import _cpp
        print(_cpp.cpu_status().reason)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "loaded from cache" in done.stdout and "building" not in done.stderr, done.stdout + done.stderr
