"""The methods of the design-space benchmark, as their own configs run them, and their lr x beta grids.

Every method is a TrainConfig override of the same trainer. "published" is the (lr, beta) the method's
own config uses; the grid holds it and is extended around the winner (design_space.py). Where each
value comes from, and every remaining deviation, is in docs/design_space.md.

    flowgrpo          FlowGRPO's SD3.5-M GenEval config (configs/flowgrpo_sd3.yaml): SDE, CFG 4.5 in
                      rollouts and training (unconditional branch without gradient), the first 9 of 10
                      steps in order, 2 optimizer steps per epoch, global-std advantages, rollouts from
                      the current policy, clip 1e-4, beta 0.04, lr 3e-4; evaluated with CFG 4.5, 40 steps
    flowgrpo_nocfg    the same with CFG 1 everywhere (rollouts, training, evaluation): the comparable
                      baseline on a task where the base model with CFG is already at the target
    diffusionnft      DiffusionNFT's SD3.5-M GenEval config (configs/diffusion_nft_geneval.yaml): nft objective
                      on the ELBO residuals, optimality-probability advantages with the global std, DPM2 ODE
                      rollouts without CFG, K = 9 of 10 grid steps, beta 1e-4, lr 3e-4
    awm               AWM's SD3.5-M GenEval config (configs/awm_geneval.yaml): ratio (PPO-clip, clip 1) on the
                      ghuber (p = 0.25) ELBO, ODE, 14 steps, K = 6 (one per stratum of steps 1-11), global-std
                      advantages clip(A, -5, 5) / 5, beta 1e-3, KL to an EMA anchor (weight 1), lr 3e-4
                      (both configs replaced Flow-Factory-derived ones after the recorded results in
                      benchmarks/results/; issue 23 reruns them)
    recipe            the study's recipe at its defaults (configs/study_recipe.yaml): ELBO pepg + ODE,
                      K = 9 on the grid, A = 0.1 (R - mean), lr 3e-4, beta 1e-4, grad clip 5
    recipe_sde        the same with SDE rollouts (the study's "ELBO + SDE vs ODE" comparison)

Pruned (to fit 2 shared cores; docs/design_space.md says so): the epg / par objectives and the *_noratio
twins of the recipe. With one optimizer step per epoch and the old policy a lagging blend they moved
within a few percent of pepg in the previous study (benchmarks/results/design_space.md history).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import yaml

EVAL_STEPS = 40  # every method is deployed (evaluated) with 40 ODE steps, as FlowGRPO / the study evaluate SD3.5

FLOWGRPO = dict(
    estimator="trajectory", sampler="sde", objective="grpo", advantage_mode="standard", advantage_std="global",
    kl="girsanov", noise_level=0.7, num_steps=10, guidance_scale=4.5, trajectory_steps=9,
    trajectory_step_order="first", inner_steps=2, rollout_policy="current", clip_range=1e-4, adv_clip_max=5.0,
    grad_clip=1.0, eval_num_steps=EVAL_STEPS, eval_guidance_scale=4.5,
)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _official(name: str) -> tuple:
    """(overrides, (lr, beta)) of a method's official GenEval config in configs/ (its header cites the source)."""
    values = yaml.safe_load((CONFIGS / name).read_text())
    return values, (values.pop("lr"), values.pop("beta"))


DIFFUSIONNFT, DIFFUSIONNFT_PUBLISHED = _official("diffusion_nft_geneval.yaml")
AWM, AWM_PUBLISHED = _official("awm_geneval.yaml")
RECIPE = dict(
    estimator="elbo", objective="pepg", weighting="adaptive", sampler="ode", guidance_scale=1.0,
    draws_per_sample=9, timestep_sampler="grid", advantage_mode="exact", advantage_scale=0.1, grad_clip=5.0,
    eval_num_steps=EVAL_STEPS, eval_guidance_scale=1.0,
)

# Grid axes: lr in half-decades, beta in decades; 0 (no KL) is the end of the beta axis.
LR_AXIS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BETA_AXIS = (0.0, 1e-5, 1e-4, 1e-3, 4e-3, 4e-2, 4e-1, 4.0)


def _upwards(axis, value, count):
    """value and the count - 1 next values above it on the axis."""
    i = axis.index(value)
    return tuple(axis[i: i + count])


def method_table() -> Dict[str, dict]:
    """name -> {"overrides", "label", "published": (lr, beta), "lrs", "betas", "epochs", "source"[, "follows"]}.

    The first grid is the published lr and the next two half-decades above it (this tiny model has
    always wanted larger steps than SD3.5: the previous study's winners were 1e-3 to 1e-2) at the
    published beta; bracketing (design_space.py) then runs whatever neighbour of the winner is
    missing along either axis (beta included), so the grid's start decides cost, not the answer. FlowGRPO's
    epoch budget is 4x the others' (at 2x, every seed at its best point was still rising when it ended).
    A method with "follows" is not swept: it runs at the followed method's chosen point (one knob
    changed, the study's way of comparing samplers)."""
    def entry(overrides, label, lr, beta, epochs, source, betas=None):
        return dict(overrides=overrides, label=label, published=(lr, beta), lrs=_upwards(LR_AXIS, lr, 3),
                    betas=betas or (beta,), epochs=epochs, source=source)

    return {
        "flowgrpo": entry(dict(FLOWGRPO), "FlowGRPO (SD3 config, CFG 4.5, as deployed)", 3e-4, 4e-2, 120,
                          "FlowGRPO ac4c86e config/grpo.py geneval_sd3, config/base.py, scripts/train_sd3.py"),
        "flowgrpo_nocfg": entry(dict(FLOWGRPO, guidance_scale=1.0, eval_guidance_scale=1.0),
                                "FlowGRPO (SD3 config, no CFG)", 3e-4, 4e-2, 120,
                                "as flowgrpo, with CFG 1 in rollouts, training and evaluation"),
        "diffusionnft": entry(dict(DIFFUSIONNFT), "DiffusionNFT", *DIFFUSIONNFT_PUBLISHED, 30,
                              "DiffusionNFT 24af555 config/nft.py sd3_geneval (configs/diffusion_nft_geneval.yaml)"),
        "awm": entry(dict(AWM), "AWM", *AWM_PUBLISHED, 30,
                     "AWM be51372 config/dgx_awm.py geneval_sd3_no_cfg_1node (configs/awm_geneval.yaml)"),
        "recipe": entry(dict(RECIPE), "ELBO pepg + ODE (study recipe)", 3e-4, 1e-4, 30,
                        "arXiv 2602.04663 defaults (configs/study_recipe.yaml)"),
        "recipe_sde": dict(entry(dict(RECIPE, sampler="sde"), "ELBO pepg + SDE", 3e-4, 1e-4, 30,
                                 "the recipe with SDE rollouts (noise_level 0.7)"), follows="recipe"),
    }


def neighbours(axis, value):
    """(lower, upper) neighbours of value on axis (None past an end)."""
    i = axis.index(value)
    return (axis[i - 1] if i > 0 else None), (axis[i + 1] if i + 1 < len(axis) else None)


def missing_brackets(points, winner) -> list:
    """The (lr, beta) points still needed so the winner has a run on both sides along each axis (at its
    own value of the other axis). An axis end (beta 0, the smallest lr on LR_AXIS) needs no neighbour."""
    lr, beta = winner
    needed = []
    for axis, index in ((LR_AXIS, 0), (BETA_AXIS, 1)):
        for other in neighbours(axis, winner[index]):
            if other is None:
                continue
            point = (other, beta) if index == 0 else (lr, other)
            if point not in points:
                needed.append(point)
    return needed
