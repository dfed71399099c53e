"""The memory estimate's LoRA count agrees with what peft actually adds (elbo_kernels.models.memory)."""

from diffusers import FluxTransformer2DModel

from elbo_kernels.models.flux import LORA_TARGET_MODULES
from elbo_kernels.models.lora import add_lora
from elbo_kernels.models.memory import estimate, lora_parameter_count


def tiny():
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=8,
                                  pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))


def test_lora_count_equals_the_parameters_peft_adds():
    transformer = tiny()
    add_lora(transformer, LORA_TARGET_MODULES, rank=4, alpha=8.0, adapter_names=("default",))
    added = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n)
    assert lora_parameter_count(tiny(), LORA_TARGET_MODULES, rank=4) == added


def test_estimate_scales_activations_with_draws_and_not_weights():
    one = estimate(tiny(), LORA_TARGET_MODULES, rank=4, tokens=64, hidden=16, blocks=3, draws=1)
    eight = estimate(tiny(), LORA_TARGET_MODULES, rank=4, tokens=64, hidden=16, blocks=3, draws=8)
    assert eight.weights_gib == one.weights_gib and eight.lora_gib == one.lora_gib
    assert eight.activations_gib == 8 * one.activations_gib
    assert one.parameters == sum(p.numel() for p in tiny().parameters())
