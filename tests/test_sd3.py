"""Specification of the SD3 / SD3.5 adapter (elbo_kernels.models.sd3) and the SD3 branch of load_task.

Runs offline on a tiny random StableDiffusion3Pipeline written with save_pretrained and
loaded by path through the same code as the real model.
"""

import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch

from elbo_kernels.models import FlowModelAdapter
from elbo_kernels.models.sd3 import (
    LORA_TARGET_MODULES,
    ModelNotAvailableError,
    SD3Model,
    read_prompts,
    save_tiny_pipeline,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd3"))


@pytest.fixture(scope="module")
def model(tiny_dir):
    torch.set_num_threads(2)
    return SD3Model.load(str(tiny_dir), max_sequence_length=8)


# ----------------------------------------------------------------------------- the adapter


def test_model_implements_the_flow_model_adapter_protocol(model):
    assert isinstance(model, FlowModelAdapter)
    assert type(model.transformer).__name__ == "SD3Transformer2DModel"
    assert model.lora_target_modules == LORA_TARGET_MODULES
    assert model.recommended_lora == {"rank": 32, "alpha": 64.0}
    assert model.sampler_shift == 3.0


def test_latent_shape_comes_from_vae_factor_channels_and_resolution(model):
    assert model.latent_shape == (16, 8, 8)  # tiny: native 16 px, vae factor 2
    sd35 = types.SimpleNamespace(  # SD3.5-M's config values, no weights
        vae_scale_factor=8, transformer=types.SimpleNamespace(config=types.SimpleNamespace(
            in_channels=16, patch_size=2, sample_size=128), parameters=lambda: iter([torch.zeros(1)])),
        vae=None, text_encoder=None, text_encoder_2=None, text_encoder_3=None)
    assert SD3Model(sd35).latent_shape == (16, 64, 64)  # default 512 px
    assert SD3Model(sd35, resolution=1024).latent_shape == (16, 128, 128)


def test_resolution_not_a_multiple_of_the_patch_grid_is_named(model):
    with pytest.raises(ValueError, match="resolution must be a positive multiple of 4"):
        SD3Model(model.pipeline, resolution=18)


def test_encode_prompts_matches_pipeline_encode_prompt_and_caches(model, monkeypatch):
    expected = model.pipeline.encode_prompt(["a red cube", ""], None, None, do_classifier_free_guidance=False,
                                            max_sequence_length=8)
    cond = model.encode_prompts(["a red cube", "", "a red cube"])
    assert cond["encoder_hidden_states"].shape == (3, 16 + 8, 16)
    assert cond["pooled_projections"].shape == (3, 16)
    torch.testing.assert_close(cond["encoder_hidden_states"][:2], expected[0])
    torch.testing.assert_close(cond["pooled_projections"][:2], expected[2])
    assert not torch.equal(cond["pooled_projections"][0], cond["pooled_projections"][1])
    calls = []
    original = model.pipeline.encode_prompt
    monkeypatch.setattr(model.pipeline, "encode_prompt", lambda *a, **k: calls.append(k["prompt"]) or original(*a, **k))
    model.encode_prompts(["a red cube", "", "a blue ball"])
    assert calls == [["a blue ball"]]  # only the new prompt is encoded


def test_prompt_cache_is_bounded(model):
    small = SD3Model(model.pipeline, max_sequence_length=8, prompt_cache_size=2)
    for prompt in ("a", "b", "c", "d"):
        small.encode_prompts([prompt])
    assert list(small._cache) == ["c", "d"]


def test_encode_prompts_rejects_a_bare_string(model):
    with pytest.raises(TypeError, match="single str"):
        model.encode_prompts("a cat")


def test_velocity_calls_the_transformer_as_the_pipeline_does(model):
    x = torch.randn(2, *model.latent_shape)
    t = torch.tensor([1.0, 0.25])
    cond = model.encode_prompts(["a", "b"])
    with torch.no_grad():
        expected = model.transformer(hidden_states=x, timestep=t * 1000,
                                     encoder_hidden_states=cond["encoder_hidden_states"],
                                     pooled_projections=cond["pooled_projections"], return_dict=False)[0]
        torch.testing.assert_close(model.velocity(x, t, cond), expected)


def test_velocity_rejects_mismatched_batch(model):
    with pytest.raises(ValueError, match="t must be"):
        model.velocity(torch.randn(2, *model.latent_shape), torch.rand(3), model.encode_prompts(["a", "b"]))


def test_decode_undoes_vae_scaling_and_maps_to_unit_interval(model):
    latents = torch.randn(3, *model.latent_shape)
    vae = model.pipeline.vae
    with torch.no_grad():
        raw = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    images = model.decode(latents)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    torch.testing.assert_close(images, (raw / 2 + 0.5).clamp(0, 1))


def test_bf16_weights_and_gradient_checkpointing_options(tiny_dir):
    m = SD3Model.load(str(tiny_dir), weights_dtype="bf16", gradient_checkpointing=True, max_sequence_length=8)
    assert m.transformer.dtype == torch.bfloat16
    assert m.pipeline.vae.dtype == torch.float32  # the VAE stays in float32 by default
    assert m.transformer.is_gradient_checkpointing
    x = torch.randn(2, *m.latent_shape)
    assert m.velocity(x, torch.rand(2), m.encode_prompts(["a", "b"])).dtype == torch.float32


def test_bad_weights_dtype_is_named(tiny_dir):
    with pytest.raises(ValueError, match="dtype must be one of"):
        SD3Model.load(str(tiny_dir), weights_dtype="int8")


# ----------------------------------------------------------------------------- weights that are not there


def test_missing_local_path_says_so_and_how_to_fix(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist") as info:
        SD3Model.load(str(tmp_path / "nowhere"))
    assert "hf download" in str(info.value)


def test_missing_component_is_named(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    for f in (broken / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelNotAvailableError, match=r"vae \(no weights"):
        SD3Model.load(str(broken))


@pytest.mark.slow
def test_hub_id_offline_names_repo_and_fix(tmp_path):
    code = ("from elbo_kernels.models.sd3 import SD3Model\n"
            "try:\n    SD3Model.load('stabilityai/stable-diffusion-3.5-medium')\n"
            "except OSError as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))  # an empty cache, whatever this machine has
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("ModelNotAvailableError")
    assert "'stabilityai/stable-diffusion-3.5-medium' is not in the local Hugging Face cache" in out
    assert "HF_HUB_OFFLINE=1" in out and "hf download" in out


# ----------------------------------------------------------------------------- prompts and load_task


def test_read_prompts_txt_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    assert read_prompts(tmp_path / "p.txt") == (["a cat", "a dog"], {"a cat": {}, "a dog": {}})
    record = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    (tmp_path / "m.jsonl").write_text(json.dumps(record) + "\n")
    assert read_prompts(tmp_path / "m.jsonl") == (["a photo of a cat"], {"a photo of a cat": record})
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")


def test_load_task_sd3_branch_uses_prompt_file_and_passes_metadata(tiny_dir, tmp_path, monkeypatch):
    from elbo_kernels.rewards import REWARDS
    from elbo_kernels.train.task import load_task

    seen = {}

    def spy(images, prompts, metadata=None):
        seen["metadata"] = metadata
        return {"spy": [0.0] * len(prompts), "avg": [0.0] * len(prompts)}, {}

    monkeypatch.setitem(REWARDS, "spy", lambda: spy)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a cat", "tag": "x"}) + "\n")
    monkeypatch.setenv("ELBO_KERNELS_PROMPTS", str(tmp_path / "p.jsonl"))
    task = load_task(str(tiny_dir), "spy")
    assert isinstance(task.model, SD3Model) and task.prompts == ["a cat"] and task.metric == "reward_eval"
    task.reward_fn(torch.zeros(1, 3, 16, 16), ["a cat"], None)
    assert seen["metadata"] == [{"prompt": "a cat", "tag": "x"}]


def test_load_task_names_a_bad_option(tiny_dir, monkeypatch):
    from elbo_kernels.train.task import load_task

    monkeypatch.setenv("ELBO_KERNELS_GRADIENT_CHECKPOINTING", "maybe")
    with pytest.raises(ValueError, match="ELBO_KERNELS_GRADIENT_CHECKPOINTING"):
        load_task(str(tiny_dir), "brightness")


# ----------------------------------------------------------------------------- end to end through the Trainer


def test_trainer_end_to_end_rollout_reward_loss_step_checkpoint_reload(tiny_dir, tmp_path):
    from peft import PeftModel

    from elbo_kernels.train import Trainer
    from elbo_kernels.train.config import TrainConfig

    config = TrainConfig(model=str(tiny_dir), reward="jpeg_incompressibility", output_dir=str(tmp_path / "run"),
                         epochs=3, prompts_per_epoch=2, group_size=2, num_steps=3, draws_per_sample=2,
                         lora_rank=4, lora_alpha=8.0, lr=1e-2, eval_every=0, eval_seeds=1, checkpoint_every=1,
                         plots=False, tensorboard=False, progress=False)
    trainer = Trainer(config)
    before = {n: p.detach().clone() for n, p in trainer.transformer.named_parameters() if ".default." in n}
    summary = trainer.fit()
    assert trainer.step == 3 and summary["epochs"] == 3
    assert all(r["seconds_reward"] > 0 for r in trainer.history)
    changed = [n for n, p in trainer.transformer.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed, "the optimizer step changed no LoRA parameter"
    assert "reward_eval" in trainer.history[-1]

    checkpoint = tmp_path / "run" / "checkpoints" / "epoch-000003"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "COMPLETE").is_file()
    fresh = SD3Model.load(str(tiny_dir), max_sequence_length=256)
    reloaded = PeftModel.from_pretrained(fresh.transformer, str(checkpoint))
    x = torch.randn(2, *fresh.latent_shape)
    cond = trainer.model.encode_prompts(["a", "b"])
    kwargs = dict(hidden_states=x, timestep=torch.tensor([500.0, 900.0]), return_dict=False,
                  encoder_hidden_states=cond["encoder_hidden_states"], pooled_projections=cond["pooled_projections"])
    with torch.no_grad(), trainer.policy("ema"):
        expected = trainer.transformer(**kwargs)[0]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**kwargs)[0], expected)
