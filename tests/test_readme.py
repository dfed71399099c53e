"""README.md as a new user meets it: every shell command and Python example runs as written, in a fresh
directory, in the order they appear and in reverse order (slow: the full main job, twice per order);
every Python block also runs after a short main job (fast); and the complete adapter of
docs/new_model.md trains.

A block whose first line is ``# NAME.py`` is a file the user saves (my_rewards.py), not a command: it
is written before any command runs. Commands that cannot run here are listed in NOT_RUN with the reason.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEW_MODEL = README.parent / "docs" / "new_model.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
EXAMPLES = re.findall(r"```(bash|python)\n(.*?)```", README.read_text(), flags=re.S)  # (language, text), in order
FILE_BLOCK = re.compile(r"# (\w+\.py)\n")

# Commands of the README's bash blocks that the test does not run (matched on their start), and why.
NOT_RUN = {
    "pip install": "installs the package: the test runs in the environment it made",
    "python -m pytest": "the test suite itself",
    "accelerate launch --multi_gpu": "needs 8 GPUs and the Stable Diffusion 3.5 Medium weights",
    "elbo-kernels train --config configs/flux.yaml": "needs the FLUX.1 weights",
}


def readme_steps():
    """(files {name: text}, steps [(kind, text)]) of the README in order; kind "shell" or "python";
    plus the NOT_RUN prefixes that matched a command."""
    files, steps, skipped = {}, [], set()
    for language, text in EXAMPLES:
        name = FILE_BLOCK.match(text)
        if language == "python" and name:
            files[name.group(1)] = text
        elif language == "python":
            steps.append(("python", text))
        else:
            for line in text.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                for command in filter(None, (part.strip() for part in line.split("&&"))):
                    prefix = next((p for p in NOT_RUN if command.startswith(p)), None)
                    if prefix:
                        skipped.add(prefix)
                    else:
                        steps.append(("shell", command))
    return files, steps, skipped


def test_readme_examples_are_found_and_every_skip_is_used():
    files, steps, skipped = readme_steps()
    assert "my_rewards.py" in files
    assert skipped == set(NOT_RUN)  # a skip that matches nothing is stale: remove it
    assert sum(kind == "shell" for kind, _ in steps) >= 3 and sum(kind == "python" for kind, _ in steps) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("order", ["as written", "reversed"])
def test_every_readme_command_and_example_runs_in_a_fresh_directory(tmp_path, order):
    files, steps, _ = readme_steps()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if order == "reversed":
        steps = steps[::-1]
    bin_dir = str(Path(sys.executable).parent)  # elbo-kernels and python of this environment
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    for index, (kind, text) in enumerate(steps):
        if kind == "python":
            script = tmp_path / f"example_{index}.py"
            script.write_text(text)
            cmd = [sys.executable, str(script)]
        else:
            cmd = ["bash", "-c", text]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=1200)
        assert done.returncode == 0, f"{order}, step {index}:\n{text}\n" + done.stdout[-2000:] + done.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert runs == ["darkness", "darkness_api", "digiteval", "digiteval-2"], runs
    for run in runs:
        assert (tmp_path / "outputs" / run / "summary.json").is_file(), run


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.fixture(scope="module")
def after_main_job(tmp_path_factory):
    """`elbo-kernels train`, cut to 2 epochs and a small evaluation: the directory a user runs the blocks in
    (its outputs/digiteval beside them)."""
    root = tmp_path_factory.mktemp("readme")
    cmd = [sys.executable, "-m", "elbo_kernels.cli", "train", "--epochs", "2", "--eval_every", "0",
           "--eval_seeds", "1", "--plots", "false", "--report_to", "none", "--progress", "false"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return root


@pytest.mark.parametrize("index", range(len(BLOCKS)))
@pytest.mark.slow
def test_readme_python_block_runs(after_main_job, index):
    script = after_main_job / f"block_{index}.py"
    script.write_text(BLOCKS[index])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(after_main_job),
                                                                        os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], cwd=after_main_job, capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n" + done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.slow
def test_new_model_guide_example_trains_its_adapter(tmp_path):
    (example,) = re.findall(r"```python\n(.*?)```", NEW_MODEL.read_text(), flags=re.S)
    script = tmp_path / "tiny_flow.py"
    script.write_text(example)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    first, last = map(float, re.search(r"brightness ([0-9.]+) -> ([0-9.]+)", done.stdout).groups())
    assert last > first, done.stdout  # the run is seeded: RL raised the brightness of the untrained model
    assert (tmp_path / "outputs" / "tiny_flow" / "summary.json").is_file()
