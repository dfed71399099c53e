"""The trainer under `accelerate launch` with 2 CPU processes (gloo) equals one process on the same batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

JOB = Path(__file__).with_name("multiprocess_job.py")


def launch(out: Path, processes: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if processes == 1:
        command = [sys.executable, str(JOB), str(out)]
    else:
        # Port 0: a free rendezvous port, so concurrent launches on one machine never collide on 29500.
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
                   "--dynamo_backend", "no", str(JOB), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    launch(root / "two", 2)
    launch(root / "one", 1)
    return root


@pytest.mark.slow
def test_two_processes_hold_disjoint_halves_with_distinct_latents(runs):
    ranks = [torch.load(runs / f"two_rank{r}_latents.pt") for r in (0, 1)]
    assert ranks[0]["samples"] == [0, 1, 2, 3] and ranks[1]["samples"] == [4, 5, 6, 7]
    finals = torch.cat([r["final"] for r in ranks]).flatten(1)
    assert torch.cdist(finals, finals).add(torch.eye(8) * 1e9).min() > 1e-3  # no two samples alike
    single = torch.load(runs / "one_rank0_latents.pt")["final"]
    torch.testing.assert_close(torch.cat([r["final"] for r in ranks]), single)


def test_two_processes_train_like_one_process_with_the_same_global_batch(runs):
    def weights(name):
        return load_file(str(runs / name / "checkpoints" / "epoch-000002" / "adapters" / "default" /
                             "adapter_model.safetensors"))

    one, two = weights("one"), weights("two")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-4)
    changed = max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k)
    assert changed > 1e-3  # the comparison is not between two untrained adapters
