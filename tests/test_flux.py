"""Specification of the FLUX.1 adapter (elbo_kernels.models.flux) against diffusers' own FluxPipeline code.

Offline: a tiny random FluxPipeline written with save_pretrained and loaded by path.
"""

import numpy as np
import pytest
import torch

import elbo_kernels as ek
from elbo_kernels.models import FlowModelAdapter
from elbo_kernels.models.flux import FluxModel, image_position_ids, pack, resolution_shift, save_tiny_pipeline, unpack
from elbo_kernels.sampling import timestep_grid


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture(scope="module")
def model(flux_dir):
    return FluxModel.load(str(flux_dir), max_sequence_length=8)


def test_pack_and_unpack_match_the_pipelines_own_functions_and_round_trip():
    from diffusers import FluxPipeline

    latents = torch.randn(3, 16, 6, 10)
    packed = pack(latents)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 3, 16, 6, 10), rtol=0, atol=0)
    # The pipeline's unpack takes pixel sizes and the VAE factor (8 for FLUX): 6x10 latent = 48x80 px.
    torch.testing.assert_close(unpack(packed, 6, 10), FluxPipeline._unpack_latents(packed, 48, 80, 8), rtol=0, atol=0)
    assert torch.equal(unpack(packed, 6, 10), latents)


def test_image_position_ids_match_the_pipeline():
    from diffusers import FluxPipeline

    expected = FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32)
    assert torch.equal(image_position_ids(6, 10), expected)


def test_pack_rejects_odd_latent_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        pack(torch.zeros(1, 16, 5, 4))


@pytest.mark.parametrize("resolution", [512, 1024])
def test_sampler_shift_reproduces_the_schedulers_resolution_dependent_grid(resolution):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    # FLUX.1-dev's scheduler settings (dynamic shifting between 256 and 4096 tokens).
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    tokens = (resolution // 16) ** 2
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    steps = 10
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    shift = resolution_shift(tokens, scheduler.config)
    assert shift == pytest.approx(np.exp(mu), rel=1e-12)
    torch.testing.assert_close(timestep_grid(steps, shift=shift), scheduler.sigmas.float(), rtol=1e-5, atol=1e-6)


def test_model_shift_follows_its_resolution(flux_dir):
    small = FluxModel.load(str(flux_dir), resolution=16, max_sequence_length=8)
    large = FluxModel.load(str(flux_dir), resolution=64, max_sequence_length=8)
    assert small.latent_shape == (16, 64) and large.latent_shape == (256, 64)
    assert small.sampler_shift < large.sampler_shift  # more tokens -> more steps at high noise


def test_model_implements_the_protocol_with_packed_latents_and_the_guidance_embedding(model):
    assert isinstance(model, FlowModelAdapter)
    assert type(model.transformer).__name__ == "FluxTransformer2DModel"
    assert model.latent_shape == (64, 64) and model.latent_size == (16, 16)  # 32 px, VAE factor 2
    assert model.guidance == 3.5


def test_velocity_calls_the_transformer_as_the_pipeline_does(model):
    x = torch.randn(2, *model.latent_shape)
    t = torch.tensor([1.0, 0.3])
    cond = model.encode_prompts(["a red cube", "a cat"])
    hidden, pooled, text_ids = model.pipeline.encode_prompt(["a red cube", "a cat"], None, max_sequence_length=8)
    with torch.no_grad():
        expected = model.transformer(hidden_states=x, timestep=t, guidance=torch.full((2,), 3.5),
                                     pooled_projections=pooled, encoder_hidden_states=hidden, txt_ids=text_ids,
                                     img_ids=_pipeline_image_ids(model), return_dict=False)[0]
        torch.testing.assert_close(model.velocity(x, t, cond), expected)
        other = FluxModel(model.pipeline, guidance=1.0, max_sequence_length=8)
        assert not torch.allclose(other.velocity(x, t, cond), expected)  # the guidance value reaches the model


def _pipeline_image_ids(model):
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)


def test_decode_unpacks_and_undoes_the_vae_scaling_and_shift(model):
    from diffusers import FluxPipeline

    packed = torch.randn(2, *model.latent_shape)
    vae = model.pipeline.vae
    z = FluxPipeline._unpack_latents(packed, 32, 32, model.pipeline.vae_scale_factor)
    with torch.no_grad():
        raw = vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    torch.testing.assert_close(model.decode(packed), (raw / 2 + 0.5).clamp(0, 1))


def test_guidance_is_refused_for_a_model_without_the_embedding(tmp_path):
    schnell = FluxModel.load(str(save_tiny_pipeline(tmp_path / "schnell", guidance_embeds=False)), max_sequence_length=8)
    assert schnell.guidance is None
    with pytest.raises(ValueError, match="no guidance embedding"):
        FluxModel(schnell.pipeline, guidance=3.5)


def test_elbo_and_kl_on_packed_latents_equal_those_on_the_unpacked_latents():
    # Packing is a permutation of latent elements: every per-draw mean is unchanged (FlowGRPO once crashed here).
    b, k = 2, 3
    unpacked = [torch.randn(b * k, 16, 8, 8) for _ in range(4)]
    x0 = torch.randn(b, 16, 8, 8)
    t = torch.rand(b * k) * 0.9 + 0.05
    adv = torch.randn(b * k)
    packed = [pack(u) for u in unpacked]
    for backend in ("torch", "cpu"):
        e_packed = ek.elbo(packed[0], pack(x0), packed[1], t, weighting="adaptive", backend=backend)
        e_unpacked = ek.elbo(unpacked[0], x0, unpacked[1], t, weighting="adaptive", backend="torch")
        torch.testing.assert_close(e_packed, e_unpacked)
        v = packed[0].clone().requires_grad_(True)
        loss, stats = ek.policy_loss(v, packed[2], packed[3], pack(x0), packed[1], t, adv, objective="pepg",
                                     weighting="adaptive", kl="girsanov", beta=0.1, backend=backend)
        v_u = unpacked[0].clone().requires_grad_(True)
        loss_u, stats_u = ek.policy_loss(v_u, unpacked[2], unpacked[3], x0, unpacked[1], t, adv, objective="pepg",
                                         weighting="adaptive", kl="girsanov", beta=0.1, backend="torch")
        torch.testing.assert_close(loss, loss_u)
        torch.testing.assert_close(stats["kl"], stats_u["kl"])
        loss.backward()
        loss_u.backward()
        torch.testing.assert_close(v.grad, pack(v_u.grad))
