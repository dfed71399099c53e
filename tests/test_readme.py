"""Every Python block of README.md runs as written, in a fresh process, after (a short run of) the
README's main-job command, from the directory the command ran in; and the complete adapter of
docs/new_model.md trains."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEW_MODEL = README.parent / "docs" / "new_model.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.fixture(scope="module")
def after_main_job(tmp_path_factory):
    """`elbo-kernels train`, cut to 2 epochs and a small evaluation: the blocks need its outputs/digits."""
    root = tmp_path_factory.mktemp("readme")
    cmd = [sys.executable, "-m", "elbo_kernels.cli", "train", "--epochs", "2", "--eval_every", "0",
           "--eval_seeds", "1", "--plots", "false", "--tensorboard", "false", "--progress", "false"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return root


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(after_main_job, index):
    script = after_main_job / f"block_{index}.py"
    script.write_text(BLOCKS[index])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(after_main_job),
                                                                        os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], cwd=after_main_job, capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n" + done.stdout[-2000:] + done.stderr[-4000:]


def test_new_model_guide_example_trains_its_adapter(tmp_path):
    (example,) = re.findall(r"```python\n(.*?)```", NEW_MODEL.read_text(), flags=re.S)
    script = tmp_path / "tiny_flow.py"
    script.write_text(example)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    first, last = map(float, re.search(r"brightness ([0-9.]+) -> ([0-9.]+)", done.stdout).groups())
    assert last > first, done.stdout  # the run is seeded: RL raised the brightness of the untrained model
    assert (tmp_path / "outputs" / "tiny_flow" / "summary.json").is_file()
