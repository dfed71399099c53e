"""Sharded training (FSDP2) under `accelerate launch --config_file configs/accelerate/fsdp.yaml` with 2 CPU
processes (gloo): the final weights equal one unsharded process's, and a run resumed from the sharded run's
epoch-1 checkpoint ends where the uninterrupted one does. Full fine-tuning (frozen reference / old / ema copies
sharded apart from the optimizer) and LoRA over sharded frozen weights (peft adapters switched while sharded)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "tests" / "fsdp_job.py"
CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"


def run(out: Path, lora_rank: int, epochs: int, sharded: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env["OMP_NUM_THREADS"] = "1"
    job = [str(JOB), str(out), str(lora_rank), str(epochs)]
    if sharded:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
                   "--num_processes", "2", *job]
    else:
        command = [sys.executable, *job]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def weights(out: Path, lora_rank: int, epoch: int) -> dict:
    """Every trained tensor of the checkpoint: trained / old / ema policies."""
    path = out / "checkpoints" / f"epoch-{epoch:06d}"
    if lora_rank:
        files = {n: path / "adapters" / n / "adapter_model.safetensors" for n in ("default", "old", "ema")}
    else:
        files = {n: path / f"{n}.safetensors" for n in ("transformer", "transformer_old", "transformer_ema")}
    return {f"{name}/{key}": value for name, file in files.items() for key, value in load_file(str(file)).items()}


@pytest.mark.parametrize("lora_rank", [0, 8], ids=["full", "lora"])
@pytest.mark.slow
def test_fsdp_two_processes_train_like_one_and_resume(tmp_path, lora_rank):
    run(tmp_path / "one", lora_rank, 2, sharded=False)
    run(tmp_path / "two", lora_rank, 2, sharded=True)
    assert (tmp_path / "two" / "checkpoints" / "epoch-000002" / "optimizer_full.pt").is_file()  # sharded layout
    one, two = weights(tmp_path / "one", lora_rank, 2), weights(tmp_path / "two", lora_rank, 2)
    assert one.keys() == two.keys()
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert worst < 1e-5, f"2 sharded processes differ from 1 process by {worst}"
    start = weights(tmp_path / "one", lora_rank, 1)
    moved = max(float((one[k] - start[k]).abs().max()) for k in one if "lora_A" not in k)
    assert moved > 100 * max(worst, 1e-7)  # epoch 2 changed the weights far beyond the tolerance

    # Resume the sharded run from its epoch-1 checkpoint, under FSDP again.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed, ignore=shutil.ignore_patterns("epoch-000002"))
    run(resumed, lora_rank, 2, sharded=True)
    again = weights(resumed, lora_rank, 2)
    worst_resume = max(float((again[k] - two[k]).abs().max()) for k in two)
    assert worst_resume < 1e-6, f"the resumed sharded run differs from the uninterrupted one by {worst_resume}"
