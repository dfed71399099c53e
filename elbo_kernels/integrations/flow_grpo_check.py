"""Verify a FlowGRPO patch: the drop-in reproduces FlowGRPO's log_prob and gradient on your model.

    python -m elbo_kernels.integrations.flow_grpo_check --flow_grpo ~/flow_grpo \\
        --config config/grpo.py:general_ocr_sd3 [--model PATH] [--device cuda]

What it checks, on one batch of your own model and config, with FlowGRPO's own code as the reference:

1. samples an SDE trajectory with FlowGRPO's ``sde_step_with_logprob`` (from the checkout's
   ``flow_grpo`` package), CFG as the config samples it;
2. for each trained timestep j, compares the drop-in's ``compute_log_prob`` (estimator
   "trajectory") against FlowGRPO's ``compute_log_prob`` from the unmodified
   ``scripts/train_sd3.py`` (the file itself while it still defines the function, else its
   ``git show HEAD:`` version): log_prob, prev_sample_mean, std_dev_t, and the gradient of
   sum(log_prob) with respect to every trainable (LoRA) parameter;
3. runs the ELBO estimator once on the same batch: ``prepare_elbo_samples`` then
   ``compute_log_prob`` at j = 0 must give an on-policy ratio of 1 and a finite gradient.

What it prints: a table, one row per timestep j (relative differences of log_prob, mean, std and
the gradient, the gradient's cosine, "ok" or "MISMATCH"), the ELBO line, then PASS or FAIL. Nothing
is trained or written (except the result as JSON with --json). Run it before switching
``config.train.estimator`` to "elbo".

Exit codes:
    0  PASS: every check holds
    1  FAIL: a check does not hold (the table says which)
    2  usage: a bad flag, or a path that is not there (the checkout, --config, --reference_script),
       in one line on stderr
    3  the check could not run: an unexpected error (the traceback is shown)
    7  the model weights are not available (one line saying how to fetch them)

Flags are spelled with underscores (--flow_grpo), as ``elbo-kernels train``'s; dashes work too.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .._argparse import Parser
from . import flow_grpo as dropin

# |ours - FlowGRPO| / max(|FlowGRPO|, 1) for values, ||g_ours - g|| / ||g|| for gradients, per weights dtype:
# float32 rounding differences stay below 1e-5; a real difference (e.g. a branch not detached) is > 1e-2.
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR, EXIT_MODEL = 0, 1, 2, 3, 7
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 5e-2), torch.float16: (1e-2, 5e-2)}


class UsageError(ValueError):
    """A path or value given on the command line is wrong; the message names the flag."""


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(root: Path, spec: str):
    """``path.py:function`` (path relative to the checkout) -> the function's ml_collections config."""
    path, _, function = spec.partition(":")
    if not function:
        raise UsageError(f"--config must be path.py:function (e.g. config/grpo.py:compressibility), got {spec!r}")
    file = Path(path) if Path(path).is_absolute() else root / path
    if not file.is_file():
        raise UsageError(f"--config file {file} does not exist")
    return getattr(_load_module(f"flowgrpo_config_{file.stem}", file), function)()


def reference_compute_log_prob(root: Path, script: Optional[str]):
    """FlowGRPO's own compute_log_prob, from the unmodified training script."""
    path = Path(script) if script else root / "scripts" / "train_sd3.py"
    if not script and "def compute_log_prob" not in path.read_text():
        # Patched as docs/flow_grpo.md says: the function was deleted; take the committed version.
        try:
            text = subprocess.run(["git", "-C", str(root), "show", "HEAD:scripts/train_sd3.py"], check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            raise RuntimeError(f"{path} no longer defines compute_log_prob and `git show HEAD:scripts/train_sd3.py` "
                               f"failed ({error}); pass --reference_script with an unmodified copy") from None
        handle = tempfile.NamedTemporaryFile("w", suffix="_train_sd3.py", delete=False)
        handle.write(text)
        handle.close()
        path = Path(handle.name)
    module = _load_module("flowgrpo_train_sd3_reference", path)
    if not hasattr(module, "compute_log_prob"):
        raise RuntimeError(f"{path} defines no compute_log_prob; pass --reference_script with an unmodified copy")
    return module.compute_log_prob, path


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1.0))


def _gradient(value: torch.Tensor, params: List[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double() for g, p in zip(grads, params)])


@torch.no_grad()
def sample_batch(pipeline, transformer, step, config, prompts: List[str], seed: int, device) -> Dict:
    """One FlowGRPO-layout sample dict from an SDE rollout with FlowGRPO's step function."""
    embeds, _, pooled, _ = pipeline.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=128)
    negative, _, negative_pooled, _ = pipeline.encode_prompt([""] * len(prompts), None, None, device=device,
                                                             do_classifier_free_guidance=False, max_sequence_length=128)
    scheduler = pipeline.scheduler
    scheduler.set_timesteps(config.sample.num_steps, device=device)
    b, scale = len(prompts), pipeline.vae_scale_factor
    channels = transformer.config.in_channels
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(b, channels, config.resolution // scale, config.resolution // scale, generator=generator,
                    device=device, dtype=embeds.dtype)
    guidance = float(config.sample.guidance_scale)
    latents, log_probs = [x], []
    for t in scheduler.timesteps:
        if guidance > 1:
            out = transformer(hidden_states=torch.cat([x] * 2), timestep=t.expand(2 * b),
                              encoder_hidden_states=torch.cat([negative, embeds]),
                              pooled_projections=torch.cat([negative_pooled, pooled]), return_dict=False)[0]
            uncond, text = out.chunk(2)
            v = uncond + guidance * (text - uncond)
        else:
            v = transformer(hidden_states=x, timestep=t.expand(b), encoder_hidden_states=embeds,
                            pooled_projections=pooled, return_dict=False)[0]
        x, log_prob, _, _ = step(scheduler, v.float(), t.unsqueeze(0), x.float(), noise_level=config.sample.noise_level,
                                 generator=generator)
        x = x.to(embeds.dtype)
        latents.append(x)
        log_probs.append(log_prob)
    stacked = torch.stack(latents, dim=1)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "negative": (negative, negative_pooled),
            "timesteps": scheduler.timesteps.repeat(b, 1), "latents": stacked[:, :-1], "next_latents": stacked[:, 1:],
            "log_probs": torch.stack(log_probs, dim=1)}


def check(args: argparse.Namespace) -> Dict:
    root = Path(args.flow_grpo).expanduser().resolve()
    if not (root / "flow_grpo").is_dir():
        raise UsageError(f"--flow_grpo {root} is not a FlowGRPO checkout (no flow_grpo/ package in it)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from flow_grpo.diffusers_patch.sd3_sde_with_logprob import sde_step_with_logprob as flowgrpo_step

    from ..models.sd3 import LORA_TARGET_MODULES, load_pipeline, resolve_dtype

    config = load_config(root, args.config)
    for key, value in (("pretrained.model", args.model), ("sample.num_steps", args.num_steps),
                       ("resolution", args.resolution)):
        if value is not None:
            node, leaf = config, key.split(".")
            for part in leaf[:-1]:
                node = node[part]
            node[leaf[-1]] = value
    reference, reference_path = reference_compute_log_prob(root, args.reference_script)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype)
    pipeline = load_pipeline(config.pretrained.model, dtype=dtype).to(device)
    transformer = pipeline.transformer
    if config.use_lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if config.train.lora_path:
            transformer = PeftModel.from_pretrained(transformer, config.train.lora_path)
            transformer.set_adapter("default")
        else:
            transformer = get_peft_model(transformer, LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian",
                                                                 target_modules=LORA_TARGET_MODULES))
            with torch.no_grad():  # B = 0 at init would leave A without gradient: check every parameter
                generator = torch.Generator(device=device).manual_seed(args.seed)
                for name, p in transformer.named_parameters():
                    if "lora_B" in name:
                        p.copy_(1e-3 * torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype))
    else:
        transformer.requires_grad_(True)
    params = [p for p in transformer.parameters() if p.requires_grad]
    prompts = args.prompt or ["a photo of a cat", "a red cube on a blue table"]
    sample = sample_batch(pipeline, transformer, flowgrpo_step, config, prompts, args.seed, device)
    negative, negative_pooled = sample.pop("negative")
    if config.train.cfg:
        embeds = torch.cat([negative, sample["prompt_embeds"]])
        pooled = torch.cat([negative_pooled, sample["pooled_prompt_embeds"]])
    else:
        embeds, pooled = sample["prompt_embeds"], sample["pooled_prompt_embeds"]
    trajectory_config = copy.deepcopy(config)
    trajectory_config.train.estimator = "trajectory"
    value_tol, grad_tol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    rows = []
    for j in range(dropin.train_timesteps(config, config.sample.num_steps)):
        _, theirs, their_mean, their_std = reference(transformer, pipeline, sample, j, embeds, pooled, config)
        _, ours, our_mean, our_std = dropin.compute_log_prob(transformer, pipeline, sample, j, embeds, pooled,
                                                             trajectory_config)
        g_theirs, g_ours = _gradient(theirs.sum(), params), _gradient(ours.sum(), params)
        gradient = float((g_ours - g_theirs).norm() / g_theirs.norm().clamp_min(1e-30))
        row = {"j": j, "log_prob": _relative(ours, theirs), "prev_sample_mean": _relative(our_mean, their_mean),
               "std_dev_t": _relative(our_std.expand_as(our_std), their_std.expand_as(our_std)),
               "gradient": gradient,
               "cosine": float(g_ours @ g_theirs / (g_ours.norm() * g_theirs.norm()).clamp_min(1e-30))}
        row["ok"] = max(row["log_prob"], row["prev_sample_mean"], row["std_dev_t"]) <= value_tol and gradient <= grad_tol
        rows.append(row)
    elbo_config = copy.deepcopy(config)
    elbo_config.train.estimator = "elbo"
    elbo_sample = dropin.prepare_elbo_samples(transformer, pipeline, dict(sample), elbo_config, seed=args.seed,
                                              micro_batch=len(prompts))
    _, e, _, _ = dropin.compute_log_prob(transformer, pipeline, elbo_sample, 0, embeds, pooled, elbo_config)
    elbo_gradient = _gradient(e.sum(), params)
    elbo = {"on_policy_log_ratio": float((e.detach() - elbo_sample["log_probs"][:, 0]).abs().max()),
            "gradient_norm": float(elbo_gradient.norm()), "elbo": e.detach().tolist()}
    elbo["ok"] = elbo["on_policy_log_ratio"] <= value_tol and 0 < elbo["gradient_norm"] < float("inf")
    return {"flow_grpo": str(root), "reference": str(reference_path), "model": str(config.pretrained.model),
            "device": str(device), "dtype": str(dtype), "cfg": bool(config.train.cfg), "tolerances": [value_tol, grad_tol],
            "trajectory": rows, "elbo": elbo, "ok": all(r["ok"] for r in rows) and elbo["ok"]}


def report(result: Dict) -> str:
    lines = [f"FlowGRPO {result['flow_grpo']} (reference compute_log_prob from {result['reference']})",
             f"model {result['model']} on {result['device']} in {result['dtype']}, train.cfg={result['cfg']}",
             "estimator 'trajectory' vs FlowGRPO (relative max differences; gradient: relative L2 over trainable "
             f"parameters; tolerances {result['tolerances'][0]:g} / {result['tolerances'][1]:g})",
             f"{'j':>3} {'log_prob':>10} {'mean':>10} {'std':>10} {'gradient':>10} {'cosine':>10}  result"]
    for r in result["trajectory"]:
        lines.append(f"{r['j']:>3} {r['log_prob']:>10.2e} {r['prev_sample_mean']:>10.2e} {r['std_dev_t']:>10.2e} "
                     f"{r['gradient']:>10.2e} {r['cosine']:>10.6f}  {'ok' if r['ok'] else 'MISMATCH'}")
    elbo = result["elbo"]
    lines.append(f"estimator 'elbo': on-policy |log ratio| {elbo['on_policy_log_ratio']:.2e}, gradient norm "
                 f"{elbo['gradient_norm']:.3e}  {'ok' if elbo['ok'] else 'FAILED'}")
    lines.append("PASS: the patch reproduces FlowGRPO; switching to estimator 'elbo' is safe" if result["ok"]
                 else "FAIL: the drop-in does not reproduce FlowGRPO here; see docs/flow_grpo.md")
    return "\n".join(lines)


def check_paths(args: argparse.Namespace) -> None:
    """The paths the check needs, before anything is loaded: UsageError naming the flag."""
    root = Path(args.flow_grpo).expanduser()
    if not root.is_dir():
        raise UsageError(f"--flow_grpo {root}: no such directory (pass your FlowGRPO checkout)")
    if not (root / "flow_grpo").is_dir():
        raise UsageError(f"--flow_grpo {root} is not a FlowGRPO checkout (no flow_grpo/ package in it)")
    path, _, function = args.config.partition(":")
    if not function:
        raise UsageError(f"--config must be path.py:function (e.g. config/grpo.py:compressibility), got "
                         f"{args.config!r}")
    file = Path(path) if Path(path).is_absolute() else root / path
    if not file.is_file():
        raise UsageError(f"--config file {file} does not exist")
    if args.reference_script and not Path(args.reference_script).is_file():
        raise UsageError(f"--reference_script {args.reference_script} does not exist")
    if not args.reference_script and not (root / "scripts" / "train_sd3.py").is_file():
        raise UsageError(f"{root / 'scripts' / 'train_sd3.py'} does not exist: pass --reference_script")


def build_parser() -> Parser:
    parser = Parser(prog="python -m elbo_kernels.integrations.flow_grpo_check", description=__doc__)
    parser.add_argument("--flow_grpo", required=True, help="the FlowGRPO checkout (holds flow_grpo/ and scripts/)")
    parser.add_argument("--config", required=True, help="path.py:function, e.g. config/grpo.py:general_ocr_sd3")
    parser.add_argument("--model", help="override config.pretrained.model (hub id or local diffusers folder)")
    parser.add_argument("--reference_script", help="an unmodified train_sd3.py (default: the checkout's, or git HEAD's)")
    parser.add_argument("--num_steps", type=int, help="override config.sample.num_steps")
    parser.add_argument("--resolution", type=int, help="override config.resolution")
    parser.add_argument("--prompt", action="append", help="a prompt of the batch (repeatable)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="fp32", help="weights dtype: fp32 (default, tightest check), bf16, fp16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result as JSON here")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the check; returns the exit code (module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        check_paths(args)
        result = check(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - the model's absence is one line; anything else is shown whole
        if type(error).__name__ == "ModelNotAvailableError":
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            return EXIT_MODEL
        traceback.print_exc()
        print(f"error: the check could not run ({type(error).__name__}, above)", file=sys.stderr)
        return EXIT_ERROR
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return EXIT_PASS if result["ok"] else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
