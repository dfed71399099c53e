"""Your own reward: ``--reward package.module:attribute`` with FlowGRPO's reward signature."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from elbo_kernels.rewards import get_reward, load_reward
from elbo_kernels.train.config import TrainConfig, require_known_reward

MODULE = textwrap.dedent(
    """
    import numpy as np

    def darkness(images, prompts, metadata):
        # FlowGRPO's signature; an array of scores, as FlowGRPO's own rewards return
        return 1 - images.float().reshape(len(images), -1).mean(1).numpy(), {"kind": "darkness"}

    def make_darkness():
        return darkness

    class Darkness:
        def __call__(self, images, prompts, metadata=None):
            return {"avg": 1 - images.float().reshape(len(images), -1).mean(1).numpy()}, {}

    def needs_device(device):
        return darkness

    NOT_CALLABLE = 3

    def make_nothing():
        return 3
    """
)


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    yield tmp_path
    sys.modules.pop("my_rewards", None)


def _images(n=5):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attribute", ["darkness", "make_darkness", "Darkness"])
def test_function_factory_and_class_give_the_same_scores(reward_module, attribute):
    images = _images()
    expected = 1 - images.reshape(5, -1).mean(1).numpy()
    scores, _ = get_reward(f"my_rewards:{attribute}")(images, ["a"] * 5, None)
    np.testing.assert_allclose(scores["avg"], expected, rtol=1e-6)


def test_weighted_list_mixes_a_registered_and_your_reward(reward_module):
    # brightness is the mean pixel (rounded to uint8) and darkness 1 - mean: with weights 0.5 / 0.5
    # the average is 0.5 up to brightness's uint8 rounding.
    images = _images()
    scores, _ = get_reward("brightness:0.5,my_rewards:darkness:0.5")(images, ["a"] * 5, None)
    np.testing.assert_allclose(scores["avg"], 0.5, atol=1 / 255)
    assert set(scores) >= {"brightness", "my_rewards:darkness", "avg"}


@pytest.mark.parametrize("spec,error,match", [
    ("no_such_module_xyz:reward", ValueError, "cannot import module 'no_such_module_xyz'"),
    ("my_rewards:missing", ValueError, "has no attribute 'missing'"),
    ("my_rewards:NOT_CALLABLE", TypeError, "not a function, factory or class"),
    ("my_rewards:needs_device", TypeError, "one required argument"),
    ("my_rewards:make_nothing", TypeError, "returned a int"),
])
def test_bad_reward_paths_say_what_is_wrong(reward_module, spec, error, match):
    with pytest.raises(error, match=match):
        load_reward(spec)


def test_config_accepts_an_import_path_and_still_rejects_unknown_names():
    require_known_reward("my_rewards:darkness")
    with pytest.raises(ValueError, match="package.module:attribute"):
        require_known_reward("nope")


@pytest.mark.slow
def test_train_command_runs_with_your_reward(reward_module, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(reward_module), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "elbo_kernels.cli", "train", "--reward", "my_rewards:make_darkness",
           "--output_dir", str(out), "--epochs", "2", "--prompts_per_epoch", "2", "--group_size", "2",
           "--draws_per_sample", "2", "--eval_every", "0", "--eval_seeds", "1", "--plots", "false",
           "--tensorboard", "false", "--progress", "false", "--backend", "torch"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 <= r["reward_mean"] <= 1 for r in records)
    assert TrainConfig.from_yaml(out / "config.yaml").reward == "my_rewards:make_darkness"
