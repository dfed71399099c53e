"""Verify an AWM patch: ``awm_loss`` reproduces the script's own loss lines on your model.

    python -m elbo_kernels.integrations.awm_check --awm ~/advantage_weighted_matching/advantage_weighted_matching \\
        --config config/dgx_awm.py:geneval_sd3_no_cfg_1node [--model PATH] [--device cuda]

On one batch of your own model and config (LoRA as the script sets it up, with its "ema"
adapter moved away from the trained one): T = ``train.train_timesteps`` draws per sample,
timestep-major as the script lays them out, at timesteps of the sampler's grid; the script's
own ``compute_log_prob_awm`` for the trained policy (with gradient), the reference (adapters
disabled) and the EMA anchor, and recorded old log-probs (the anchor's, so that the ratio
moves off 1 and the clip is exercised). Then

- the script's own lines, from ``# grpo logic`` down to ``info["loss"].append(loss)``, taken from
  the unmodified ``scripts/train_sd3_awm.py`` (the file while it still has them, else its
  ``git show HEAD:`` version, or ``--reference-script``);
- the drop-in, :func:`elbo_kernels.integrations.awm.awm_loss`, on the same tensors;

and compares the loss, the logged terms (clipfrac, policy_loss, kl_loss, ema_kl_loss) and the
gradient of the loss over every parameter of the trained LoRA adapter. Exits 0 when all agree.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .._argparse import Parser
from . import _script_check as common
from .awm import awm_loss

SCRIPT = "scripts/train_sd3_awm.py"
START, END = "# grpo logic", 'info["loss"].append(loss)'
ORIGINAL = "unclipped_loss = -advantages * ratio"  # a line the patch removes


class _Quiet:
    """The script's accelerator, as far as its loss lines use it (they print on the main process)."""

    is_main_process = False


def check(args: argparse.Namespace) -> Dict:
    root = Path(args.awm).expanduser().resolve()
    config, pipeline, device, dtype = common.setup(args, root, "flow_grpo")
    text, where = common.script_text(root, SCRIPT, ORIGINAL, args.reference_script)
    block = common.extract_block(text, START, END, where)
    log_prob_awm = common.run_lines(common.extract_function(text, "compute_log_prob_awm", where), {"torch": torch},
                                    f"compute_log_prob_awm from {where}")["compute_log_prob_awm"]
    transformer, params = common.lora_transformer(pipeline, ["ema"], args.seed, device)
    prompts = args.prompt or ["a photo of a cat", "a red cube on a blue table"]
    b, draws = len(prompts), int(config.train.train_timesteps)
    embeds, pooled = common.encode(pipeline, prompts, device)
    if config.train.cfg:  # the script's layout: cat([negative, positive]), then repeated per draw
        negative, negative_pooled = common.encode(pipeline, [""] * b, device)
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
    embeds, pooled = torch.cat([embeds] * draws), torch.cat([pooled] * draws)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    latent = config.resolution // pipeline.vae_scale_factor
    shape = (b, pipeline.transformer.config.in_channels, latent, latent)
    clean = torch.cat([torch.randn(shape, generator=generator, device=device, dtype=embeds.dtype)] * draws)
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    pipeline.scheduler.set_timesteps(config.sample.num_steps, device=device)
    grid = pipeline.scheduler.timesteps / 1000
    picks = torch.randint(len(grid), (draws,), generator=generator, device=device)
    timesteps = torch.repeat_interleave(grid[picks], b).view(-1, 1, 1, 1)  # the same t for a draw's B rows
    noised = (1 - timesteps) * clean + timesteps * noise
    sample = {"advantages": 2.5 * float(config.train.adv_clip_max) * (
        torch.rand(b, 1, generator=generator, device=device) - 0.5), "timesteps": timesteps,
        "clean_latents": clean, "train_random_noise": noise}

    def run():
        return log_prob_awm(transformer, pipeline, sample, timesteps, embeds, pooled, config, noised, clean, noise,
                            weighting=config.train.weighting)

    with torch.no_grad():
        transformer.set_adapter("ema")
        old_log_prob, ema_output, _ = run()
        transformer.set_adapter("default")
        with transformer.disable_adapter():
            _, ref_output, _ = run()
    for p in params:
        p.requires_grad_(True)
    log_prob, output, std_dev_t = run()
    sample["old_log_probs"] = old_log_prob.reshape(draws, b)

    def rows(x):
        return x.reshape(draws, b, *x.shape[1:])

    theirs_sample = dict(sample, log_probs=rows(log_prob), ref_log_probs=rows(log_prob), model_output=rows(output),
                         model_output_ref=rows(ref_output), model_output_ema=rows(ema_output), std_dev_t=rows(std_dev_t))
    namespace = common.run_lines(block, {"torch": torch, "config": config, "sample": theirs_sample,
                                         "accelerator": _Quiet(), "info": defaultdict(list)},
                                 f"AWM loss lines from {where}")
    theirs = {"loss": namespace["loss"], **{key: values[-1] for key, values in namespace["info"].items() if key != "loss"}}
    loss, info = awm_loss(sample, config, output, ref_output, ema_output)
    value_tol, grad_tol = common.TOLERANCES.get(dtype, common.TOLERANCES[torch.float32])
    result = common.compare({"loss": loss, **info}, theirs, params, value_tol, grad_tol)
    result.update({"checkout": str(root), "reference": where, "model": str(config.pretrained.model),
                   "device": str(device), "dtype": str(dtype)})
    return result


def parser() -> Parser:
    p = Parser(prog="python -m elbo_kernels.integrations.awm_check",
               description=__doc__.split("\n\n")[0])
    common.common_arguments(p, "--awm", "config/dgx_awm.py:geneval_sd3_no_cfg_1node")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    return common.main_for(check, parser(), "AWM", argv)


if __name__ == "__main__":
    sys.exit(main())
