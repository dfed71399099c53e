"""Specification of the Wan text-to-video adapter (elbo_kernels.models.wan) and video rewards, offline."""

import numpy as np
import pytest
import torch

from elbo_kernels.models.wan import WanModel, save_tiny_pipeline
from elbo_kernels.rewards.video import video_reward


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return WanModel.load(str(save_tiny_pipeline(tmp_path_factory.mktemp("tiny_wan"))), resolution=32, frames=5,
                         max_sequence_length=8)


def test_latents_are_5d_with_the_vaes_temporal_and_spatial_compression(model):
    assert model.latent_shape == (16, 2, 4, 4)  # 5 frames -> 1 + 4/4 latent frames; 32 px / 8
    assert WanModel(model.pipeline, resolution=32, frames=9).latent_shape == (16, 3, 4, 4)


def test_frames_off_the_vae_grid_are_named(model):
    with pytest.raises(ValueError, match="frames must be an int 4k \\+ 1"):
        WanModel(model.pipeline, resolution=32, frames=6)


def test_sampler_shift_is_the_schedulers_flow_shift(model):
    assert model.sampler_shift == 3.0


def test_velocity_calls_the_transformer_as_the_pipeline_does(model):
    x = torch.randn(2, *model.latent_shape)
    t = torch.tensor([0.9, 0.2])
    hidden, _ = model.pipeline.encode_prompt(["a cat", "a dog"], do_classifier_free_guidance=False,
                                             max_sequence_length=8)
    with torch.no_grad():
        expected = model.transformer(hidden_states=x, timestep=t * 1000, encoder_hidden_states=hidden,
                                     return_dict=False)[0]
        torch.testing.assert_close(model.velocity(x, t, model.encode_prompts(["a cat", "a dog"])), expected)


def test_decode_undoes_the_latent_normalisation_and_returns_frames(model):
    latents = torch.randn(1, *model.latent_shape)
    vae = model.pipeline.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        raw = vae.decode(latents / (1.0 / std) + mean, return_dict=False)[0]  # the pipeline's expression
    video = model.decode(latents)
    assert video.shape == (1, 3, 5, 32, 32)
    torch.testing.assert_close(video, (raw / 2 + 0.5).clamp(0, 1))


def test_video_reward_scores_every_frame_and_averages_per_video():
    videos = torch.rand(2, 3, 4, 8, 8)
    seen = {}

    def brightness(images, prompts, metadata):
        seen.update(count=images.shape[0], prompts=prompts, metadata=metadata)
        return {"avg": images.mean(dim=(1, 2, 3)).numpy()}, {}

    scores, _ = video_reward(brightness, videos, ["a", "b"], [{"k": 1}, {"k": 2}])
    assert seen["count"] == 8 and seen["prompts"] == ["a"] * 4 + ["b"] * 4 and seen["metadata"][4] == {"k": 2}
    per_frame = videos.mean(dim=(1, 3, 4)).double().numpy()  # [N, F]
    np.testing.assert_allclose(scores["frames_avg"], per_frame, rtol=1e-6)
    np.testing.assert_allclose(scores["avg"], per_frame.mean(1), rtol=1e-6)


def test_video_reward_rejects_images_and_a_prompt_count_mismatch():
    with pytest.raises(ValueError, match="videos must be"):
        video_reward(lambda *a: None, torch.rand(2, 3, 8, 8), ["a", "b"])
    with pytest.raises(ValueError, match="one prompt per video"):
        video_reward(lambda *a: None, torch.rand(2, 3, 1, 8, 8), ["a"])


def test_sample_grid_lays_frames_out_as_a_strip(tmp_path):
    from PIL import Image

    from elbo_kernels.train.plots import sample_grid

    def sampler(prompts, seed):
        return torch.rand(len(prompts), 3, 5, 8, 8)

    sample_grid(sampler, tmp_path / "grid.png", ["a"], seeds=1)
    width, height = Image.open(tmp_path / "grid.png").size
    assert width > 3 * height  # one row, one video of 5 frames side by side
