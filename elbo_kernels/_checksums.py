"""Content hashes of checkpoint files: recorded in the COMPLETE marker, checked before anything is loaded.

A checkpoint directory's ``COMPLETE`` marker is JSON written after every other file:

    {"epoch": 40, "hash": "sha256",
     "files": {"optimizer.pt": {"size": 150994943, "sha256": "9f2c..."}, ...}}

Sizes catch truncation cheaply; the hashes catch everything that keeps the size (a block
overwritten in place, flipped bits). Markers written before hashes existed list sizes only
({"files": {"optimizer.pt": 150994943}}) or hold "ok": their contents cannot be verified, and
:func:`verify` says so with ``legacy=True`` rather than pretending.

This module sits below the trainer and the model adapters, so that resuming a run and loading
an adapter (``digits.load_pipeline``) check the same thing.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, Optional

COMPLETE = "COMPLETE"
HASH = "sha256"
# Large reads keep the hash at memory speed; hashlib releases the GIL on buffers this size, so
# the files of a checkpoint hash in parallel threads.
CHUNK = 8 << 20


class CorruptCheckpointError(ValueError):
    """A checkpoint's files do not match what its COMPLETE marker recorded when it was written."""


def file_digest(path: Path) -> str:
    digest = hashlib.new(HASH)
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while True:
            read = f.readinto(buffer)
            if not read:
                break
            digest.update(view[:read])
    return digest.hexdigest()


def digests(directory: Path, names: Iterable[str]) -> Dict[str, str]:
    """name -> hex digest of ``directory / name``, hashed in parallel threads (largest first)."""
    names = sorted(names, key=lambda n: -(directory / n).stat().st_size)
    workers = max(1, min(len(names), os.cpu_count() or 1, 8))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(names, pool.map(lambda n: file_digest(directory / n), names)))


def manifest(directory: Path, epoch: Optional[int] = None) -> dict:
    """The COMPLETE marker's content for every file under ``directory`` (sizes and hashes)."""
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.name != COMPLETE)
    hashes = digests(directory, names)
    files = {n: {"size": (directory / n).stat().st_size, HASH: hashes[n]} for n in names}
    return {**({"epoch": epoch} if epoch is not None else {}), "hash": HASH, "files": files}


def read_manifest(directory: Path) -> Optional[dict]:
    """The parsed marker ({"files": {name: {"size", "sha256"?}}}), or None when there is no readable one."""
    try:
        text = (Path(directory) / COMPLETE).read_text()
    except OSError:
        return None
    if text.strip() == "ok":
        return {"files": None}
    try:
        value = json.loads(text)
        files = value["files"]
        if not isinstance(files, dict):
            return None
        value["files"] = {name: entry if isinstance(entry, dict) else {"size": entry}
                          for name, entry in files.items()}
        return value
    except (ValueError, KeyError, TypeError):
        return None


def sizes_match(directory: Path) -> bool:
    """True when the marker is readable and every file it lists exists at the listed size (cheap)."""
    found = read_manifest(directory)
    if found is None:
        return False
    if found["files"] is None:
        return True
    try:
        return all((directory / name).stat().st_size == entry["size"] for name, entry in found["files"].items())
    except (OSError, KeyError, TypeError):
        return False


def verify(directory: Path, names: Optional[Iterable[str]] = None) -> bool:
    """Check the files of ``directory`` (or only ``names`` of them) against its COMPLETE marker.

    Returns True when contents were checked, False when the marker predates content hashes
    (sizes checked, contents not: a legacy checkpoint). Raises :class:`CorruptCheckpointError`
    naming the first file that is missing, has another size, or whose content hash differs
    from the recorded one.
    """
    directory = Path(directory)
    found = read_manifest(directory)
    if found is None:
        raise CorruptCheckpointError(f"{directory}: no readable {COMPLETE} marker")
    if found["files"] is None:
        return False
    listed = found["files"]
    wanted = list(listed) if names is None else list(names)
    for name in wanted:
        if name not in listed:
            raise CorruptCheckpointError(f"{directory}: {name} is not listed in its {COMPLETE} marker")
        try:
            size = (directory / name).stat().st_size
        except OSError as error:
            raise CorruptCheckpointError(f"{directory}: {name} is missing ({error.strerror})") from None
        if size != listed[name].get("size"):
            raise CorruptCheckpointError(f"{directory}: {name} has {size} bytes, {listed[name].get('size')} "
                                         f"were written")
    hashed = [n for n in wanted if HASH in listed[n]]
    if len(hashed) < len(wanted):
        return False
    try:
        actual = digests(directory, hashed)
    except OSError as error:
        raise CorruptCheckpointError(f"{directory}: {error.filename} cannot be read ({error.strerror})") from None
    for name in hashed:
        if actual[name] != listed[name][HASH]:
            raise CorruptCheckpointError(f"{directory}: {name} has changed since it was written (its {HASH} "
                                         f"differs from the one recorded in {COMPLETE})")
    return True


def verify_adapter(adapter_dir: Path, files: Iterable[str]) -> None:
    """Verify an adapter's ``files`` when ``adapter_dir`` lies in a checkpoint (its own marker, or the
    checkpoint's two levels up for ``adapters/<name>``). A plain adapter directory (no marker) has
    nothing to check against and passes."""
    adapter_dir = Path(adapter_dir).resolve()
    for root in (adapter_dir, adapter_dir.parent.parent):
        if (root / COMPLETE).is_file():
            prefix = adapter_dir.relative_to(root).as_posix()
            verify(root, [f"{prefix}/{n}" if prefix != "." else n for n in files])
            return
