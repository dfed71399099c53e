"""DiffusionNFT's and AWM's real training scripts, unmodified and patched as the docs say, log the same numbers.

Their code is not part of this repository: point ELBO_KERNELS_DIFFUSION_NFT at a DiffusionNFT checkout
(github.com/NVlabs/DiffusionNFT, written against 24af555) and ELBO_KERNELS_AWM at an AWM checkout
(github.com/scxue/advantage_weighted_matching, be51372); each test is skipped without its checkout.

Each test copies the checkout, applies the edits printed in docs/diffusion_nft.md or docs/awm.md
(the code blocks of the page, in order, so the recipe is what is tested), and runs both scripts
for 2 trained epochs with 2 gloo processes on a tiny random SD3 (tests/flow_family_launch.py),
with the script's GenEval config scaled down. Every logged number must agree to float32
rounding. About 25 s per run on 2 CPU cores.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elbo_kernels.models.sd3 import save_tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = Path(__file__).with_name("flow_family_launch.py")

CONFIG = '''
import imp
import os

source = imp.load_source("official_config", os.path.join(os.getcwd(), "config", "{config_file}"))


def tiny():
    config = source.{function}()
    config.pretrained.model = os.environ["TINY_SD3"]
    config.dataset = os.environ["TINY_DATASET"]
    config.reward_fn = {{"jpeg_compressibility": 1.0}}  # GenEval needs its server
    config.resolution = 16
    config.mixed_precision = "no"
    config.logdir = config.save_dir = os.environ["TINY_LOGDIR"]
    config.sample.num_image_per_prompt = 4
    config.sample.train_batch_size = 4
    config.sample.num_batches_per_epoch = 2
    config.sample.test_batch_size = 4
    config.train.learning_rate = 3e-2  # so that the policy moves in two epochs
{extra}
    return config


def get_config(name):
    return globals()[name]()
'''

NFT_EXTRA = '''    config.num_epochs = 2
    config.debug = True  # no evaluation or checkpoint
    config.train.batch_size = 4
    config.train.gradient_accumulation_steps = 1'''

AWM_EXTRA = '''    config.num_epochs = 4  # the script skips epochs 0 and 1 on purpose: 2 trained
    config.eval_freq = config.save_freq = 1000
    config.train.batch_size = 2
    config.train.gradient_accumulation_steps = config.train.num_batches_per_epoch = 4'''


def doc_blocks(name):
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / name).read_text(), flags=re.S)


def patch_nft(script: Path) -> None:
    """docs/diffusion_nft.md: the import below `import torch.distributed as dist`, then the loss block."""
    imports, first_line, replacement = doc_blocks("diffusion_nft.md")[:3]
    text = script.read_text()
    anchor = "import torch.distributed as dist\n"
    text = text.replace(anchor, anchor + imports, 1)
    start = text.index(first_line.strip())
    start = text.rindex("\n", 0, start) + 1
    end = text.index('                    loss_terms["old_kl_div"] = torch.mean(')
    script.write_text(text[:start] + replacement + text[end:])


def patch_awm(script: Path) -> None:
    """docs/awm.md: the import below `from flow_grpo.ema import EMAModuleWrapper`, then the loss block."""
    imports, replacement = doc_blocks("awm.md")[:2]
    text = script.read_text()
    anchor = "from flow_grpo.ema import EMAModuleWrapper\n"
    text = text.replace(anchor, anchor + imports, 1)
    start = text.index("                # grpo logic\n")
    end = text.index('                info["loss"].append(loss)\n')
    script.write_text(text[:start] + replacement + "\n" + text[end:])


SCRIPTS = {
    "diffusion_nft": dict(env="ELBO_KERNELS_DIFFUSION_NFT", inner=".", script="scripts/train_nft_sd3.py",
                          config_file="nft.py", function="sd3_geneval", extra=NFT_EXTRA, patch=patch_nft),
    "awm": dict(env="ELBO_KERNELS_AWM", inner="advantage_weighted_matching", script="scripts/train_sd3_awm.py",
                config_file="dgx_awm.py", function="geneval_sd3_no_cfg_1node", extra=AWM_EXTRA, patch=patch_awm),
}


def checkout(spec):
    path = os.environ.get(spec["env"])
    if not path:
        pytest.skip(f"set {spec['env']} to a checkout to run its real script")
    root = Path(path).expanduser().resolve()
    return root / spec["inner"] if (root / spec["inner"] / spec["script"]).is_file() else root


def run(root: Path, spec, config: Path, log: Path, env, port: int):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(LAUNCH), str(root), spec["script"], str(log), f"--config={config}:tiny"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_patched_script_logs_the_unmodified_scripts_numbers(name, tmp_path):
    spec = SCRIPTS[name]
    original = checkout(spec)
    patched = tmp_path / "patched"
    shutil.copytree(original, patched, ignore=shutil.ignore_patterns(".git"))
    spec["patch"](patched / spec["script"])
    assert "elbo_kernels.integrations" in (patched / spec["script"]).read_text()
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    rows = [json.dumps({"tag": "color_attr", "prompt": f"a photo of a {c} {t}"}) for c, t in
            zip(["red", "blue", "green", "yellow", "white", "black"], ["cube", "ball", "cat", "dog", "car", "cup"])]
    for split in ("train", "test"):
        (dataset / f"{split}_metadata.jsonl").write_text("\n".join(rows) + "\n")
    config = tmp_path / "tiny_config.py"
    config.write_text(CONFIG.format(config_file=spec["config_file"], function=spec["function"], extra=spec["extra"]))
    env = dict(os.environ, OMP_NUM_THREADS="1", TINY_DATASET=str(dataset), TINY_LOGDIR=str(tmp_path / "logs"),
               TINY_SD3=str(save_tiny_pipeline(tmp_path / "tiny_sd3", max_length=77, with_t5=True)))
    unmodified = run(original, spec, config, tmp_path / "unmodified.jsonl", env, 29531)
    ours = run(patched, spec, config, tmp_path / "patched.jsonl", env, 29532)
    assert len(unmodified) == len(ours) and any("policy_loss" in row for row in ours)
    compared = 0
    for a, b in zip(unmodified, ours):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if key.startswith("_") or "time" in key:
                continue
            # float32 rounding, grown over a few updates at lr 3e-2; the absolute floor covers values that
            # are 0 up to rounding (AWM's on-policy policy loss is -mean(A), and its advantages sum to 0).
            assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-12), (key, a, b)
            compared += 1
    assert compared > 10
