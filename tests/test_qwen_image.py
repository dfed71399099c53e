"""Specification of the Qwen-Image adapter (elbo_kernels.models.qwen_image), offline."""

import pytest
import torch

from elbo_kernels.models.qwen_image import QwenImageModel, save_tiny_pipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return QwenImageModel.load(str(save_tiny_pipeline(tmp_path_factory.mktemp("tiny_qwen"))), resolution=32)


def test_latents_are_packed_2x2_tokens(model):
    assert model.latent_shape == (4, 64) and model.latent_size == (4, 4)


def test_velocity_calls_the_transformer_as_the_pipeline_does(model):
    x = torch.randn(2, *model.latent_shape)
    t = torch.tensor([0.8, 0.4])
    prompts = ["a cat", "a much longer prompt about a dog"]
    hidden, mask = model.pipeline.encode_prompt(prompts, max_sequence_length=512)
    with torch.no_grad():
        expected = model.transformer(hidden_states=x, timestep=t, encoder_hidden_states=hidden,
                                     encoder_hidden_states_mask=mask, img_shapes=[[(1, 2, 2)]] * 2,
                                     return_dict=False)[0]
        torch.testing.assert_close(model.velocity(x, t, model.encode_prompts(prompts)), expected)


def test_a_cached_prompt_gives_the_same_velocity_whatever_batch_encoded_it(model):
    fresh = QwenImageModel(model.pipeline, resolution=32)
    alone = fresh.encode_prompts(["a cat"])  # encoded alone: no padding
    fresh.encode_prompts(["a much longer prompt about a dog"])
    batch = fresh.encode_prompts(["a cat", "a much longer prompt about a dog"])  # padded next to a longer one
    assert batch["encoder_hidden_states"].shape[1] > alone["encoder_hidden_states"].shape[1]
    x = torch.randn(1, *model.latent_shape)
    with torch.no_grad():
        v_alone = fresh.velocity(x, torch.tensor([0.5]), alone)
        v_batch = fresh.velocity(x.expand(2, -1, -1), torch.tensor([0.5, 0.5]), batch)[:1]
    torch.testing.assert_close(v_batch, v_alone, rtol=1e-4, atol=1e-5)


def test_decode_unpacks_to_one_frame_and_undoes_the_latent_normalisation(model):
    from diffusers import QwenImagePipeline

    packed = torch.randn(2, *model.latent_shape)
    vae = model.pipeline.vae
    z = QwenImagePipeline._unpack_latents(packed, 32, 32, model.pipeline.vae_scale_factor)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        raw = vae.decode(z / (1.0 / std) + mean, return_dict=False)[0][:, :, 0]
    torch.testing.assert_close(model.decode(packed), (raw / 2 + 0.5).clamp(0, 1))
