"""Peak GPU memory estimates for LoRA RL fine-tuning of a family's real-size transformer.

Nothing is downloaded: the transformer is built from its real config on PyTorch's meta device
(no storage), so parameter and LoRA counts are exact; activations are an estimate. What is counted,
per process, for the ELBO recipe (one forward + backward per micro-batch of draws):

    frozen weights       transformer parameters x bytes of weights_dtype
    LoRA                 3 adapters (default, old, ema) in fp32 + gradient + 2 AdamW moments of "default"
    checkpointed inputs  one [tokens, hidden] tensor per block per draw (gradient checkpointing),
                         in weights_dtype
    one block recomputed ``block_factor`` x [tokens, hidden] per draw (q, k, v, attention output,
                         the MLP's 4x expansion and their gradients; SDPA keeps no tokens^2 matrix)
    text encoders        only when kept on the GPU (prompt embeddings are cached, so they can be offloaded)

``python -m elbo_kernels.models.memory`` prints the table in docs/models.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import torch

GIB = 1024 ** 3


@dataclass
class Estimate:
    parameters: int
    lora_parameters: int
    weights_gib: float
    lora_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.lora_gib + self.activations_gib


def lora_parameter_count(transformer: torch.nn.Module, targets: Sequence[str], rank: int) -> int:
    """rank x (in + out) for every nn.Linear whose name ends with a target (what peft adds per adapter)."""
    total = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def estimate(transformer: torch.nn.Module, targets: Sequence[str], *, rank: int, tokens: int, hidden: int,
             blocks: int, draws: int, weight_bytes: int = 2, block_factor: int = 24) -> Estimate:
    """Memory of LoRA training on ``transformer`` with ``draws`` draws per micro-batch of ``tokens`` tokens
    (image + text) of width ``hidden`` through ``blocks`` checkpointed blocks. See the module docstring."""
    parameters = sum(p.numel() for p in transformer.parameters())
    lora = lora_parameter_count(transformer, targets, rank)
    # fp32: three adapters' weights, plus the trained one's gradient and two AdamW moments.
    lora_bytes = lora * 4 * (3 + 3)
    per_draw = tokens * hidden * weight_bytes * (blocks + block_factor)
    return Estimate(parameters, lora, parameters * weight_bytes / GIB, lora_bytes / GIB, per_draw * draws / GIB)


def real_size_transformers() -> Dict[str, dict]:
    """Each family's transformer built on the meta device from its released config, with the recommended setting.

    Returns {family: {"transformer", "targets", "tokens", "hidden", "blocks", "note"}}.
    """
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel, SD3Transformer2DModel, \
        WanTransformer3DModel

    from . import flux, qwen_image, sd3, wan

    with init_empty_weights():
        # SD3.5-Medium: 24 MMDiT-X blocks, width 1536, dual attention in the first 13.
        sd35m = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                                      attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                      caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                      pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
                                      qk_norm="rms_norm")
        # The diffusers class defaults are the released FLUX.1-dev (with its guidance embedding), Qwen-Image
        # and Wan 2.1 T2V-14B configs; Wan 2.1 T2V-1.3B is the smaller release.
        flux_dev = FluxTransformer2DModel(guidance_embeds=True)
        qwen = QwenImageTransformer2DModel()
        wan14 = WanTransformer3DModel()
        wan13 = WanTransformer3DModel(num_attention_heads=12, ffn_dim=8960, num_layers=30)
    # Tokens at the recommended size: 512 px images -> (512/16)^2 = 1024 image tokens (packed 2x2 or patch 2);
    # Wan 480x480, 33 frames -> 9 latent frames x 30 x 30 / 4 = 2025 tokens.
    return {
        "SD3.5-M": dict(transformer=sd35m, targets=sd3.LORA_TARGET_MODULES, tokens=1024 + 77 + 256, hidden=1536,
                        blocks=24, note="512 px, T5 max 256 tokens"),
        "FLUX.1-dev": dict(transformer=flux_dev, targets=flux.LORA_TARGET_MODULES, tokens=1024 + 512, hidden=3072,
                           blocks=57, note="512 px, T5 512 tokens"),
        "Qwen-Image": dict(transformer=qwen, targets=qwen_image.LORA_TARGET_MODULES, tokens=1024 + 64, hidden=3072,
                           blocks=60, note="512 px, ~64 prompt tokens"),
        "Wan2.1-T2V-1.3B": dict(transformer=wan13, targets=wan.LORA_TARGET_MODULES, tokens=2025, hidden=1536,
                                blocks=30, note="480x480, 33 frames (cross-attention text is not in the sequence)"),
        "Wan2.1-T2V-14B": dict(transformer=wan14, targets=wan.LORA_TARGET_MODULES, tokens=2025, hidden=5120,
                               blocks=40, note="480x480, 33 frames"),
    }


def table(rank: int = 32, draws: int = 8) -> str:
    """The markdown table of docs/models.md: bf16 weights, gradient checkpointing, LoRA ``rank``."""
    rows = ["| model | transformer params | LoRA params (r=%d) | bf16 weights GiB | LoRA + AdamW GiB | "
            "activations GiB (%d draws) | total GiB | setting |" % (rank, draws), "|---|---|---|---|---|---|---|---|"]
    for name, spec in real_size_transformers().items():
        e = estimate(spec["transformer"], spec["targets"], rank=rank, tokens=spec["tokens"], hidden=spec["hidden"],
                     blocks=spec["blocks"], draws=draws)
        rows.append(f"| {name} | {e.parameters / 1e9:.2f} B | {e.lora_parameters / 1e6:.1f} M | {e.weights_gib:.1f} | "
                    f"{e.lora_gib:.2f} | {e.activations_gib:.1f} | {e.total_gib:.1f} | {spec['note']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
