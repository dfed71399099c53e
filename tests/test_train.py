"""The trainer on the embedded DigitEval model: it learns, resumes exactly, and is deterministic."""

import json

import pytest
import torch
from safetensors.torch import load_file

from elbo_kernels.models import digits
from elbo_kernels.train import TrainConfig, Trainer


def small(tmp_path, name, **overrides):
    values = dict(
        output_dir=str(tmp_path / name), epochs=4, prompts_per_epoch=4, group_size=4, draws_per_sample=2,
        eval_every=0, eval_seeds=2, checkpoint_every=2, plots=False, tensorboard=False, progress=False,
        backend="torch",
    )
    values.update(overrides)
    return TrainConfig(**values)


def adapter_weights(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    return load_file(f"{summary['final_checkpoint']}/adapter_model.safetensors")


@pytest.mark.slow
def test_reward_rises_under_the_recommended_recipe(tmp_path):
    cfg = small(tmp_path, "learn", epochs=12, prompts_per_epoch=10, group_size=6, lr=1e-2, checkpoint_every=0)
    summary = Trainer(cfg).fit()
    history = [json.loads(line) for line in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward_mean"] for r in history[:3]) / 3
    last = sum(r["reward_mean"] for r in history[-3:]) / 3
    assert last > first + 0.05, (first, last)
    assert summary["skipped_steps"] == 0
    for key in ("digiteval_before", "digiteval_after", "diversity_before", "diversity_after", "wall_seconds",
                "seconds_to_0.9", "final_checkpoint"):
        assert key in summary


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    Trainer(small(tmp_path, "straight")).fit()
    Trainer(small(tmp_path, "split", epochs=2)).fit()  # "interrupted" after its epoch-2 checkpoint
    Trainer(small(tmp_path, "split", resume=True)).fit()
    straight, split = adapter_weights(tmp_path / "straight"), adapter_weights(tmp_path / "split")
    assert straight.keys() == split.keys()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key
    records = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2, 3, 4]


def test_same_seed_same_run_and_rollouts_are_deterministic(tmp_path):
    a = Trainer(small(tmp_path, "a", epochs=1))
    b = Trainer(small(tmp_path, "b", epochs=1))
    prompts = a.sample_prompts(a.generator(0, "prompts"))
    assert prompts == b.sample_prompts(b.generator(0, "prompts"))
    samples = range(len(prompts))
    ra = a.rollout(prompts, 0, samples)
    rb = b.rollout(prompts, 0, samples)
    assert torch.equal(ra.final, rb.final)
    assert not torch.equal(ra.final, a.rollout(prompts, 1, samples).final)
    # A sample's latent depends on its global index only, not on the rest of its block.
    tail = a.rollout(prompts[4:], 0, range(4, len(prompts)))
    torch.testing.assert_close(tail.final, ra.final[4:])


def test_checkpoint_loads_into_the_pipeline(tmp_path):
    Trainer(small(tmp_path, "ckpt", epochs=2, lr=0.05)).fit()
    trained = digits.load_pipeline(adapter=tmp_path / "ckpt")
    base = digits.load_pipeline()
    prompts = [digits.prompt(d) for d in range(10)]
    images = trained(prompts, num_steps=10, guidance_scale=1.0, seed=0)
    assert images.shape == (10, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert not torch.equal(images, base(prompts, num_steps=10, guidance_scale=1.0, seed=0))


def test_trajectory_estimator_runs_flowgrpo_style(tmp_path):
    cfg = small(tmp_path, "grpo", epochs=2, estimator="trajectory", sampler="sde", objective="grpo",
                draws_per_sample=2, checkpoint_every=0)
    summary = Trainer(cfg).fit()
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0


def test_full_fine_tuning_with_frozen_reference_copy(tmp_path):
    cfg = small(tmp_path, "full", epochs=2, lora_rank=0, lr=1e-4, checkpoint_every=0)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.copies["reference"].parameters()]
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.copies["reference"].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.transformer.parameters()))


def test_trajectory_training_with_cfg_takes_the_gradient_of_the_conditional_branch_only(tmp_path):
    """FlowGRPO's CFG convention in the trainer: d(guided v)/d(theta) = scale * d(v_cond)/d(theta)."""
    trainer = Trainer(small(tmp_path, "cfg", estimator="trajectory", sampler="sde", objective="grpo",
                            guidance_scale=4.5))
    with torch.no_grad():  # LoRA B starts at zero; move it so the adapter's gradient is not degenerate
        for p in trainer.parameters:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    prompts = [digits.prompt(d) for d in (3, 7)]
    x = torch.randn(2, *trainer.model.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.8, 0.4])
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # a fixed upstream gradient
    guided = torch.autograd.grad((trainer.guided_velocity(x, t, prompts) * w).sum(), trainer.parameters)
    cond = trainer.velocity(x, t, trainer.model.encode_prompts(prompts))
    expected = torch.autograd.grad((4.5 * cond * w).sum(), trainer.parameters)
    for a, b in zip(guided, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
