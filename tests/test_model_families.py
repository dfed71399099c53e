"""FLUX.1, Wan 2.1 and Qwen-Image end to end through the real trainer, loaded by `--model <folder>`.

Each family's tiny random pipeline (the real diffusers / transformers classes, tokenizers built
locally) is written with save_pretrained; the Trainer picks the adapter from the folder's
model_index.json. Per family: 2 epochs of the ELBO recipe with ODE rollouts, 2 epochs of the
trajectory estimator with SDE rollouts (bf16 weights, gradient checkpointing), and a resume.
"""

import json
import shutil

import pytest
import torch

from elbo_kernels.models.pipelines import ADAPTERS, adapter_class, load_model, pipeline_class_name
from elbo_kernels.train import Trainer
from elbo_kernels.train.config import TrainConfig

FAMILIES = {
    "flux": ("FluxPipeline", "FluxModel", {"resolution": 32}),
    "wan": ("WanPipeline", "WanModel", {"frames": 5, "resolution": 32}),
    "qwen_image": ("QwenImagePipeline", "QwenImageModel", {"resolution": 32}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    import importlib

    module = importlib.import_module(f"elbo_kernels.models.{request.param}")
    folder = module.save_tiny_pipeline(tmp_path_factory.mktemp(f"tiny_{request.param}"))
    return request.param, folder, tmp_path_factory.mktemp(f"runs_{request.param}")


def config(folder, out, **overrides):
    values = dict(model=str(folder), reward="jpeg_incompressibility", output_dir=str(out), epochs=2,
                  prompts_per_epoch=2, group_size=2, num_steps=3, draws_per_sample=2, lora_rank=4, lora_alpha=8.0,
                  lr=1e-2, eval_every=0, eval_seeds=1, checkpoint_every=1, keep_checkpoints=3, plots=False,
                  tensorboard=False, progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def lora(trainer, adapter="default"):
    return {n: p.detach().clone() for n, p in trainer.transformer.named_parameters() if f".{adapter}." in n}


def check_run(trainer, summary, before):
    assert trainer.step == 2 and summary["epochs"] == 2 and summary["skipped_steps"] == 0
    for record in trainer.history:
        assert torch.isfinite(torch.tensor([record["loss"], record["reward_mean"]])).all(), record
    after = lora(trainer)
    assert any(not torch.equal(after[n], before[n]) for n in before), "no LoRA weight changed"
    assert summary["reward_eval_after"] is not None


def test_folder_dispatches_to_the_familys_adapter(family):
    name, folder, _ = family
    pipeline, adapter, options = FAMILIES[name]
    assert pipeline_class_name(str(folder)) == pipeline
    model = load_model(str(folder), **options)
    assert type(model).__name__ == adapter and type(model) is adapter_class(pipeline)


@pytest.mark.slow
def test_elbo_recipe_with_ode_rollouts_two_epochs_then_resume(family):
    name, folder, runs = family
    trainer = Trainer(config(folder, runs / "elbo", plots=True, **FAMILIES[name][2]))
    before = lora(trainer)
    summary = trainer.fit()
    check_run(trainer, summary, before)
    assert "kl" in trainer.history[-1] and (runs / "elbo" / "samples_after.png").is_file()
    shapes = {tuple(p.shape) for n, p in trainer.transformer.named_parameters() if "lora_A" in n}
    assert all(s[0] == 4 for s in shapes)

    # Resume: drop the last checkpoint and continue from epoch 1; epoch 2 is redone exactly.
    resumed_dir = runs / "elbo_resumed"
    shutil.copytree(runs / "elbo", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "epoch-000002")
    resumed = Trainer(config(folder, resumed_dir, resume=True, **FAMILIES[name][2]))
    resumed.fit()
    assert resumed.step == 2 and len(resumed.history) == 2
    final = lora(trainer, "default")
    for n, p in lora(resumed, "default").items():
        torch.testing.assert_close(p, final[n], rtol=1e-5, atol=1e-6)


def test_trajectory_estimator_with_sde_rollouts_bf16_and_gradient_checkpointing(family):
    name, folder, runs = family
    trainer = Trainer(config(folder, runs / "trajectory", estimator="trajectory", sampler="sde", objective="grpo",
                             weights_dtype="bf16", gradient_checkpointing=True, **FAMILIES[name][2]))
    assert trainer.model.weights_dtype == torch.bfloat16 and trainer.transformer.is_gradient_checkpointing
    before = lora(trainer)
    summary = trainer.fit()
    check_run(trainer, summary, before)
    assert all(p.dtype == torch.float32 for p in before.values())  # adapters train in fp32 over bf16 weights


def test_lora_targets_default_per_family_and_can_be_overridden(family):
    name, folder, runs = family
    default = load_model(str(folder), **FAMILIES[name][2]).lora_target_modules
    assert "to_q" in default and "to_out.0" in default
    trainer = Trainer(config(folder, runs / "targets", epochs=1, lora_target_modules="to_q,to_v",
                             **FAMILIES[name][2]))
    targeted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in trainer.transformer.named_parameters()
                if "lora_A.default" in n}
    assert targeted == {"to_q", "to_v"}
    with pytest.raises(ValueError, match="match no module"):
        load_model(str(folder), lora_target_modules=["not_a_layer"], **FAMILIES[name][2])


def test_an_unsupported_pipeline_is_named_with_the_supported_list(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline") as info:
        load_model(str(tmp_path))
    for supported in ADAPTERS:
        assert supported in str(info.value)


def test_a_family_option_given_to_another_family_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="'frames'.*WanPipeline"):
        load_model(str(tmp_path), frames=5)


def test_a_folder_without_model_index_says_so(tmp_path):
    from elbo_kernels.models.sd3 import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotAvailableError, match="model_index.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("name", ["flux", "qwen_image", "wan"])
def test_shipped_family_config_loads_and_validates(name):
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    cfg = TrainConfig.from_yaml(path).validate()
    assert cfg.lora_rank == 32 and cfg.guidance_scale == 1.0 and cfg.weights_dtype == "bf16"
    assert cfg.shift is None  # the model's own (resolution-dependent) shift
