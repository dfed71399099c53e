"""Specification of the embedded DigitEval default (elbo_kernels.models.digits)."""

import json
import time

import numpy as np
import pytest
import torch

from elbo_kernels.models import FlowModelAdapter, digits
from elbo_kernels.models.digits.model import FLOW_METADATA, FLOW_WEIGHTS, WEIGHTS_DIR

PROMPTS = [digits.prompt(d) for d in range(10)]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return digits.DigitsModel.load()


@pytest.fixture(scope="module")
def pipe(model):
    return digits.DigitsPipeline(model)


# ----------------------------------------------------------------------------- prompts


def test_prompt_names_the_digit_and_parses_back():
    assert digits.prompt(7) == "a handwritten 7"
    assert [digits.parse_prompt(p) for p in PROMPTS] == list(range(10))
    assert digits.parse_prompt("") is None


@pytest.mark.parametrize("bad", ["a handwritten digit", "12", "a 3 or a 4"])
def test_parse_prompt_rejects_prompts_without_exactly_one_digit(bad):
    with pytest.raises(ValueError, match="exactly one digit"):
        digits.parse_prompt(bad)


def test_prompt_rejects_out_of_range_digit():
    with pytest.raises(ValueError, match="digit"):
        digits.prompt(10)


# ----------------------------------------------------------------------------- model adapter


def test_model_implements_the_flow_model_adapter_protocol(model):
    assert isinstance(model, FlowModelAdapter)
    assert model.latent_shape == (1, 8, 8)
    assert type(model.transformer).__name__ == "SD3Transformer2DModel"
    assert sum(p.numel() for p in model.transformer.parameters()) < 400_000


def test_encode_prompts_shapes_and_unconditional_differs(model):
    cond = model.encode_prompts(["a handwritten 3", "", "a handwritten 3"])
    assert cond["encoder_hidden_states"].shape == (3, 4, 32)
    assert cond["pooled_projections"].shape == (3, 32)
    torch.testing.assert_close(cond["pooled_projections"][0], cond["pooled_projections"][2])
    assert not torch.allclose(cond["pooled_projections"][0], cond["pooled_projections"][1])


def test_velocity_and_decode_shapes(model):
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        v = model.velocity(x, torch.full((5,), 0.5), model.encode_prompts(PROMPTS[:5]))
    assert v.shape == x.shape and v.dtype == torch.float32
    images = model.decode(torch.linspace(-2, 2, 5 * 64).reshape(5, 1, 8, 8))
    assert images.shape == (5, 1, 8, 8) and float(images.min()) == 0 and float(images.max()) == 1


def test_lora_targets_exist_and_peft_wraps_them(model):
    from peft import LoraConfig, get_peft_model

    names = {name.split(".", 3)[-1] for name, _ in model.transformer.named_modules()}
    for target in model.lora_target_modules:
        assert any(n == target or n.endswith("." + target) or n.endswith(target) for n in names), target
    transformer = digits.DigitsModel.load().transformer
    peft_model = get_peft_model(transformer, LoraConfig(r=4, lora_alpha=8, target_modules=model.lora_target_modules))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < 20_000


# ----------------------------------------------------------------------------- pipeline


def test_pipeline_returns_float_images_in_unit_range_at_dataset_resolution(pipe):
    images = pipe(PROMPTS, num_steps=10, guidance_scale=1.0, seed=0)
    assert images.shape == (10, 8, 8)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_pipeline_is_deterministic_under_a_seed(pipe):
    torch.testing.assert_close(pipe(PROMPTS, seed=3), pipe(PROMPTS, seed=3), rtol=0, atol=0)
    torch.testing.assert_close(pipe(PROMPTS, guidance_scale=4.5, seed=3), pipe(PROMPTS, guidance_scale=4.5, seed=3))


def test_different_seeds_give_different_images(pipe):
    assert float((pipe(PROMPTS, seed=0) - pipe(PROMPTS, seed=1)).abs().mean()) > 0.05


def test_per_image_seeds_do_not_depend_on_the_rest_of_the_batch(pipe):
    full = pipe(PROMPTS, seed=list(range(10)))
    alone = pipe(PROMPTS[4:5], seed=[4])
    torch.testing.assert_close(full[4:5], alone, rtol=1e-5, atol=1e-5)


def test_pipeline_with_cfg_follows_prompts_better(pipe):
    prompts = PROMPTS * 3
    with_cfg = digits.score_images(pipe(prompts, guidance_scale=4.5, seed=5), np.arange(30) % 10)
    without = digits.score_images(pipe(prompts, guidance_scale=1.0, seed=5), np.arange(30) % 10)
    assert with_cfg["digiteval"] > without["digiteval"]


def test_load_pipeline_loads_a_saved_lora_adapter_and_a_summary(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = digits.DigitsModel.load()
    peft_model = get_peft_model(
        base.transformer, LoraConfig(r=4, lora_alpha=8, target_modules=base.lora_target_modules, init_lora_weights=False)
    )
    checkpoint = tmp_path / "checkpoints" / "step_10"
    peft_model.save_pretrained(str(checkpoint))
    assert (checkpoint / "adapter_model.safetensors").is_file()
    (tmp_path / "summary.json").write_text(json.dumps({"final_checkpoint": "checkpoints/step_10"}))

    plain = digits.load_pipeline()(PROMPTS, seed=0)
    adapted = digits.load_pipeline(adapter=checkpoint)(PROMPTS, seed=0)
    via_summary = digits.load_pipeline(adapter=tmp_path)(PROMPTS, seed=0)
    base.transformer = peft_model
    expected = digits.DigitsPipeline(base)(PROMPTS, seed=0)
    assert float((adapted - plain).abs().max()) > 1e-3
    torch.testing.assert_close(adapted, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(via_summary, adapted)


def test_load_pipeline_rejects_a_directory_without_an_adapter(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter"):
        digits.load_pipeline(adapter=tmp_path)


# ----------------------------------------------------------------------------- judges and reward


def test_shipped_judge_accuracies_are_recorded_at_least_97_percent():
    record = digits.judges_metadata()
    for name in ("reward_judge", "eval_judge"):
        assert record[name]["held_out_accuracy"] >= 0.97
    assert record["split_sizes"]["held_out"] >= 300


@pytest.mark.parametrize("cls", [digits.RewardJudge, digits.EvalJudge])
def test_judges_reach_97_percent_on_the_held_out_split(cls):
    images, labels = digits.load_images()
    held = digits.judge_splits()["held_out"]
    probs = cls.load().probabilities(np.array(images[held]))
    assert float((probs.argmax(1).numpy() == labels[held]).mean()) >= 0.97


def test_judges_differ_in_architecture_and_training_images():
    reward_layers = {type(m).__name__ for m in digits.RewardJudge().modules()}
    eval_layers = {type(m).__name__ for m in digits.EvalJudge().modules()}
    assert "Conv2d" in eval_layers and "Conv2d" not in reward_layers
    splits = digits.judge_splits()
    assert not set(splits["reward_train"]) & set(splits["eval_train"])
    assert not set(splits["held_out"]) & (set(splits["reward_train"]) | set(splits["eval_train"]))


def test_reward_fn_scores_the_prompted_digit():
    images, labels = digits.load_images()
    idx = digits.judge_splits()["held_out"][:20]
    prompts = [digits.prompt(int(d)) for d in labels[idx]]
    scores, info = digits.reward_fn(torch.from_numpy(np.array(images[idx])), prompts, None)
    assert set(scores) >= {"digit", "avg"}
    assert scores["digit"].shape == (20,) and scores["digit"].dtype == np.float32
    assert np.all((scores["digit"] >= 0) & (scores["digit"] <= 1))
    np.testing.assert_array_equal(scores["avg"], scores["digit"])
    assert float(scores["digit"].mean()) > 0.8 and info["accuracy"] >= 0.9
    wrong = [digits.prompt((int(d) + 1) % 10) for d in labels[idx]]
    assert float(digits.reward_fn(images[idx], wrong, None)[0]["digit"].mean()) < 0.2


def test_reward_fn_takes_digits_from_metadata_and_rejects_disagreement():
    images = np.zeros((2, 8, 8), dtype=np.float32)
    scores, _ = digits.reward_fn(images, ["", ""], [{"digit": 1}, {"digit": 2}])
    assert scores["digit"].shape == (2,)
    with pytest.raises(ValueError, match="metadata"):
        digits.reward_fn(images, [digits.prompt(1), digits.prompt(2)], [{"digit": 1}, {"digit": 3}])
    with pytest.raises(ValueError, match="unconditional"):
        digits.reward_fn(images, ["", ""], None)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_returns_every_field_in_range_quickly(pipe):
    pipe(PROMPTS)  # warm-up
    start = time.perf_counter()
    result = digits.evaluate(pipe, num_steps=10, guidance_scale=1.0)
    elapsed = time.perf_counter() - start
    assert result["num_images"] == 200
    for key in ("digiteval", "reward_agreement", "reward", "reward_accuracy"):
        assert 0 <= result[key] <= 1, key
    assert 0.3 < result["diversity"] < 3
    assert sorted(result["per_digit"]) == list(range(10))
    assert all(0 <= a <= 1 for a in result["per_digit"].values())
    assert elapsed < 10.0  # about 0.2 s on an idle 2-core CPU; generous for loaded CI machines


def test_evaluate_accepts_a_model_and_any_sampler_callable(model):
    calls = {}

    def sampler(prompts, num_steps, guidance_scale, seed):
        calls.update(n=len(prompts), seeds=len(seed), steps=num_steps)
        return torch.full((len(prompts), 8, 8), 0.5)

    result = digits.evaluate(sampler, num_steps=3)
    assert calls == {"n": 200, "seeds": 200, "steps": 3}
    assert result["diversity"] == 0
    assert 0 <= digits.evaluate(model, num_steps=2)["digiteval"] <= 1


def test_real_digits_score_high_and_have_diversity_one():
    images, labels = digits.load_images()
    result = digits.score_images(np.array(images), labels)
    assert result["digiteval"] > 0.98
    assert result["diversity"] == pytest.approx(1.0)


def test_shipped_base_model_leaves_rl_headroom_and_cfg_shows_capacity():
    record = json.loads(FLOW_METADATA.read_text())["digiteval_10_steps"]
    assert record["euler_cfg1"]["digiteval"] <= 0.4
    assert record["euler_cfg4.5"]["digiteval"] >= 0.9
    assert record["euler_cfg1"]["diversity"] >= 0.9


def test_shipped_numbers_reproduce(pipe):
    record = json.loads(FLOW_METADATA.read_text())["digiteval_10_steps"]
    for scale in (1.0, 4.5):
        result = digits.evaluate(pipe, guidance_scale=scale)
        assert result["digiteval"] == pytest.approx(record[f"euler_cfg{scale:g}"]["digiteval"], abs=0.02)


def test_shipped_weights_are_small():
    sizes = {p.name: p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors")}
    assert FLOW_WEIGHTS.name in sizes and len(sizes) == 3
    assert sum(sizes.values()) < 4 * 2**20, sizes
