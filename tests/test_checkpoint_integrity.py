"""A checkpoint whose contents changed after it was written is never loaded (issue 12, item 1 and 5).

Corruptions that keep every file's size (a block overwritten in place, random bytes, flipped
mantissa bits that leave every value finite) used to load silently. Now resume falls back to
the newest checkpoint that verifies -- and the run then equals an uninterrupted one bitwise --
and loading the adapter of a corrupt checkpoint raises.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from elbo_kernels._checksums import COMPLETE, CorruptCheckpointError, verify
from elbo_kernels.models import digits
from elbo_kernels.train.checkpoint import is_complete, write_checkpoint
from elbo_kernels.train.errors import ResumeError
from elbo_kernels.train.state import CheckpointWarning

_spec = importlib.util.spec_from_file_location(
    "reliability_report", Path(__file__).resolve().parents[1] / "scripts" / "reliability_report.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

ADAPTER = "adapters/default/adapter_model.safetensors"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """(work directory, reference runs, a 3-epoch run whose checkpoints are epoch 2 and 3)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("integrity")
    harness.train(root / "three", epochs=3)
    yield root, harness.Reference(root), root / "three"
    torch.set_num_threads(threads)


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# --- the three corruptions of the issue, each keeping the file's size ---------------------------------
def overwrite_4k_in_the_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2 - 2048)
        f.write(np.random.default_rng(0).bytes(4096))


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def flip_a_mantissa_bit_in_1024_values(path: Path) -> None:
    """The lowest mantissa bit of 1,024 float32 values of the safetensors payload: every value stays finite."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    values = np.frombuffer(data, dtype=np.float32, offset=header, count=(len(data) - header) // 4).copy()
    chosen = np.random.default_rng(2).choice(values.size, size=min(1024, values.size), replace=False)
    values.view(np.uint32)[chosen] ^= 1
    assert np.isfinite(values).all()
    data[header:header + values.nbytes] = values.tobytes()
    path.write_bytes(bytes(data))


CORRUPTIONS = [("optimizer.pt", overwrite_4k_in_the_middle), (ADAPTER, random_bytes),
               (ADAPTER, flip_a_mantissa_bit_in_1024_values)]


@pytest.mark.parametrize("name,corrupt", CORRUPTIONS, ids=["4k_overwritten", "random_bytes", "bit_flips"])
def test_a_corrupt_newest_checkpoint_is_set_aside_and_resume_falls_back_bitwise(suite, tmp_path, name, corrupt):
    root, reference, three = suite
    out = copy_run(three, tmp_path / "run")
    newest = out / "checkpoints" / "epoch-000003"
    size = (newest / name).stat().st_size
    corrupt(newest / name)
    assert (newest / name).stat().st_size == size and is_complete(newest)  # the size check cannot see it
    with pytest.warns(CheckpointWarning, match=rf"epoch-000003 fails verification: {name} has changed"):
        harness.train(out, resume=True, epochs=4)
    assert harness.differences(harness.final_state(out), reference.state(4)) == []
    assert (out / "checkpoints" / "corrupt-epoch-000003").is_dir()  # kept for inspection, never loaded


def test_when_no_checkpoint_verifies_resume_names_the_directory_and_loads_nothing(suite, tmp_path):
    out = copy_run(suite[2], tmp_path / "run")
    for epoch in (2, 3):
        overwrite_4k_in_the_middle(out / "checkpoints" / f"epoch-{epoch:06d}" / "optimizer.pt")
    with pytest.warns(CheckpointWarning), pytest.raises(ResumeError) as info:
        harness.train(out, resume=True, epochs=4)
    message = str(info.value)
    assert f"no checkpoint under {out / 'checkpoints'} verifies" in message and "\n" not in message
    assert "epoch-000002 (optimizer.pt has changed" in message
    assert harness.metric_epochs(out) == [1, 2, 3]  # the run's records are untouched


def test_loading_the_adapter_of_a_corrupt_checkpoint_raises(suite, tmp_path):
    out = copy_run(suite[2], tmp_path / "run")
    shipped = out / "checkpoints" / "epoch-000003"
    digits.load_pipeline(adapter=shipped)  # intact: loads
    flip_a_mantissa_bit_in_1024_values(shipped / "adapter_model.safetensors")
    with pytest.raises(CorruptCheckpointError, match="adapter_model.safetensors has changed"):
        digits.load_pipeline(adapter=shipped)
    flip_a_mantissa_bit_in_1024_values(shipped / ADAPTER)
    with pytest.raises(CorruptCheckpointError, match="adapters/default/adapter_model.safetensors has changed"):
        digits.load_pipeline(adapter=shipped / "adapters" / "default")


def test_the_marker_records_size_and_sha256_of_every_file(tmp_path):
    def fill(tmp):
        (tmp / "a.bin").write_bytes(b"abc")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.json").write_text("{}")

    path = write_checkpoint(tmp_path / "checkpoints", 1, fill, keep=1)
    files = json.loads((path / COMPLETE).read_text())["files"]
    import hashlib

    assert files == {"a.bin": {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()},
                     "sub/b.json": {"size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}}
    assert verify(path) is True
    (path / "a.bin").write_bytes(b"abd")
    with pytest.raises(CorruptCheckpointError, match="a.bin has changed"):
        verify(path)


# --- item 5: a kill between the final rename and the pruning -------------------------------------------
def test_start_and_resume_clean_stale_temporary_directories_and_prune_to_keep(suite, tmp_path):
    out = tmp_path / "run"
    killed = harness.train_in_child(out, fault="kill:phase=checkpoint_prune:epoch=3", epochs=3, keep_checkpoints=1)
    assert killed == -9
    checkpoints = out / "checkpoints"
    stale = checkpoints / ".tmp-epoch-000003-99999"  # what a kill during an earlier write leaves
    stale.mkdir()
    (stale / "optimizer.pt").write_bytes(b"half")
    assert sorted(p.name for p in checkpoints.iterdir()) == [".tmp-epoch-000003-99999", "epoch-000002",
                                                            "epoch-000003"]
    harness.train(out, resume=True, epochs=3, keep_checkpoints=1)  # nothing left to train: only the tidying
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-000003"]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    root = tmp_path / "checkpoints"
    for epoch in (40, 55):
        write_checkpoint(root, epoch, lambda tmp: (tmp / "x").write_bytes(b"x"), keep=2)
    write_checkpoint(root, 3, lambda tmp: (tmp / "x").write_bytes(b"y"), keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["epoch-000003", "epoch-000055"]



def test_a_checkpoint_of_an_older_version_loads_with_a_warning_that_contents_are_unchecked(suite, tmp_path):
    out = copy_run(suite[2], tmp_path / "run")
    for path in (out / "checkpoints").glob("epoch-*"):
        listed = json.loads((path / COMPLETE).read_text())["files"]
        (path / COMPLETE).write_text(json.dumps({"files": {n: e["size"] for n, e in listed.items()}}))
    with pytest.warns(CheckpointWarning, match="written before content hashes: file sizes checked, contents not"):
        harness.train(out, resume=True, epochs=4)
    assert harness.differences(harness.final_state(out), suite[1].state(4)) == []
