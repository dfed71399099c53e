"""Verify a DiffusionNFT patch: ``nft_loss`` reproduces the script's own loss lines on your model.

    python -m elbo_kernels.integrations.diffusion_nft_check --diffusion-nft ~/DiffusionNFT \\
        --config config/nft.py:sd3_geneval [--model PATH] [--device cuda]

On one batch of your own model and config (LoRA as the script sets it up, with an "old"
adapter that differs from the trained one): x_t from random clean latents at timesteps of
the sampler's grid, the three velocities the script computes (trained, old, reference), then

- the script's own lines, from ``advantages_clip = torch.clamp(`` down to
  ``loss_terms["total_loss"]``, taken from the unmodified ``scripts/train_nft_sd3.py`` (the file
  while it still has them, else its ``git show HEAD:`` version, or ``--reference-script``);
- the drop-in, :func:`elbo_kernels.integrations.diffusion_nft.nft_loss`, on the same tensors;

and compares the loss, the logged terms (policy_loss, unweighted_policy_loss, kl_div_loss,
kl_div) and the gradient of the loss over every parameter of the trained LoRA adapter.
Prints a table, exits 0 when all agree within the dtype's tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .._argparse import Parser
from . import _script_check as common
from .diffusion_nft import nft_loss

SCRIPT = "scripts/train_nft_sd3.py"
# The script's loss lines: from the advantage clip of its timestep loop to the total-loss log.
START, END = "advantages_clip = torch.clamp(", 'loss_terms["total_loss"]'
ORIGINAL = "positive_prediction = config.beta * forward_prediction"  # a line the patch removes
TERMS = ("policy_loss", "unweighted_policy_loss", "kl_div_loss", "kl_div")


def check(args: argparse.Namespace) -> Dict:
    root = Path(args.diffusion_nft).expanduser().resolve()
    config, pipeline, device, dtype = common.setup(args, root, "flow_grpo")
    text, where = common.script_text(root, SCRIPT, ORIGINAL, args.reference_script)
    block = common.extract_block(text, START, END, where)
    transformer, params = common.lora_transformer(pipeline, ["old"], args.seed, device)
    prompts = args.prompt or ["a photo of a cat", "a red cube on a blue table", "two dogs"]
    b = len(prompts)
    embeds, pooled = common.encode(pipeline, prompts, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    latent = config.resolution // pipeline.vae_scale_factor
    channels = pipeline.transformer.config.in_channels
    x0 = torch.randn(b, channels, latent, latent, generator=generator, device=device, dtype=embeds.dtype)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    pipeline.scheduler.set_timesteps(config.sample.num_steps, device=device)
    grid = pipeline.scheduler.timesteps
    timesteps = grid[torch.randint(len(grid), (b,), generator=generator, device=device)]
    t = timesteps / 1000.0
    t_expanded = t.view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - t_expanded) * x0 + t_expanded * noise

    def velocity():
        return transformer(hidden_states=xt, timestep=timesteps, encoder_hidden_states=embeds,
                           pooled_projections=pooled, return_dict=False)[0]

    with torch.no_grad():
        transformer.set_adapter("old")
        old_prediction = velocity()
        transformer.set_adapter("default")
        with transformer.disable_adapter():
            ref_prediction = velocity()
    for p in params:
        p.requires_grad_(True)
    forward_prediction = velocity()
    # Advantages over the whole clip range and beyond, as the script's stat tracker makes them.
    advantages = 2.5 * float(config.train.adv_clip_max) * (torch.rand(b, 1, generator=generator, device=device) - 0.5)
    namespace = common.run_lines(block, {
        "torch": torch, "config": config, "train_sample_batch": {"advantages": advantages}, "j_idx": 0,
        "forward_prediction": forward_prediction, "old_prediction": old_prediction,
        "ref_forward_prediction": ref_prediction, "x0": x0, "xt": xt, "t": t, "t_expanded": t_expanded,
        "noise": noise, "loss_terms": {}}, f"DiffusionNFT loss lines from {where}")
    theirs = {"loss": namespace["loss"], **{key: namespace["loss_terms"][key] for key in TERMS}}
    loss, terms = nft_loss(forward_prediction, old_prediction, ref_prediction, x0, noise, t, namespace["r"], config)
    ours = {"loss": loss, **terms}
    value_tol, grad_tol = common.TOLERANCES.get(dtype, common.TOLERANCES[torch.float32])
    result = common.compare(ours, theirs, params, value_tol, grad_tol)
    result.update({"checkout": str(root), "reference": where, "model": str(config.pretrained.model),
                   "device": str(device), "dtype": str(dtype)})
    return result


def parser() -> Parser:
    p = Parser(prog="python -m elbo_kernels.integrations.diffusion_nft_check",
               description=__doc__.split("\n\n")[0])
    common.common_arguments(p, "--diffusion_nft", "config/nft.py:sd3_geneval")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    return common.main_for(check, parser(), "DiffusionNFT", argv)


if __name__ == "__main__":
    sys.exit(main())
