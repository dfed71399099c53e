"""What the patch verifiers of the FlowGRPO-family scripts share (diffusion_nft_check, awm_check).

Each verifier runs, on the user's checkout, model and config, a script's own loss lines (taken
from the unmodified script: the file while it still has them, else its ``git show HEAD:``
version, or ``--reference-script``) and the drop-in that replaces them, on the same model
outputs, and compares the loss, the logged terms and the gradient over every LoRA parameter.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .flow_grpo_check import TOLERANCES, _relative, load_config  # noqa: F401 - re-exported


def script_text(root: Path, relative: str, original_marker: str, reference_script: Optional[str]) -> tuple:
    """(text, where) of the unmodified script: ``reference_script``, the checkout's file while it still
    holds ``original_marker`` (a line the patch removes), else ``git show HEAD:relative``."""
    if reference_script:
        return Path(reference_script).read_text(), reference_script
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {root} the right checkout?")
    text = path.read_text()
    if original_marker in text:
        return text, str(path)
    try:
        text = subprocess.run(["git", "-C", str(root), "show", f"HEAD:./{relative}"], check=True, capture_output=True,
                              text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f"{path} is patched and `git show HEAD:{relative}` failed ({error}); pass "
                           "--reference-script with an unmodified copy") from None
    return text, f"git HEAD:{relative}"


def extract_block(text: str, start: str, end: str, where: str) -> str:
    """The lines from the first one holding ``start`` up to (not including) the next one holding ``end``,
    dedented: a script's own loss lines, to run on the verifier's tensors."""
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if start in line), None)
    if first is None:
        raise RuntimeError(f"{where} has no line with {start!r}: not the script version the recipe was written for")
    last = next((i for i in range(first + 1, len(lines)) if end in lines[i]), None)
    if last is None:
        raise RuntimeError(f"{where} has no line with {end!r} after {start!r}")
    return textwrap.dedent("".join(lines[first:last]))


def extract_function(text: str, name: str, where: str) -> str:
    """The source of the top-level function ``name`` of a script (without importing the script)."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(text, node)
    raise RuntimeError(f"{where} defines no function {name!r}")


def run_lines(source: str, namespace: Dict, label: str) -> Dict:
    exec(compile(source, f"<{label}>", "exec"), namespace)  # the user's own script lines
    return namespace


def lora_transformer(pipeline, adapters: List[str], seed: int, device):
    """The transformer with LoRA as the scripts set it up (r 32, alpha 64, attention projections):
    adapter "default" plus ``adapters``, each with B moved off zero (different per adapter) so that
    every parameter has a gradient and the policies differ."""
    from peft import LoraConfig, get_peft_model

    from ..models.sd3 import LORA_TARGET_MODULES

    lora = LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian", target_modules=LORA_TARGET_MODULES)
    transformer = get_peft_model(pipeline.transformer, lora)
    for name in adapters:
        transformer.add_adapter(name, lora)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(p + 1e-3 * torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype))
    transformer.set_adapter("default")
    params = [p for n, p in transformer.named_parameters() if "lora_" in n and ".default." in n]
    for p in params:
        p.requires_grad_(True)
    return transformer, params


def _gradient(value: torch.Tensor, params, retain: bool) -> torch.Tensor:
    grads = torch.autograd.grad(value, params, allow_unused=True, retain_graph=retain)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double() for g, p in zip(grads, params)])


def compare(ours: Dict[str, torch.Tensor], theirs: Dict[str, torch.Tensor], params, value_tol: float,
            grad_tol: float) -> Dict:
    """Relative differences of every logged value, and of the loss's gradient over ``params``."""
    rows = {key: _relative(ours[key], theirs[key]) for key in theirs if key != "loss"}
    # Both losses share the transformer's forward graph: keep it for the second gradient.
    g_ours = _gradient(ours["loss"], params, retain=True)
    g_theirs = _gradient(theirs["loss"], params, retain=False)
    result = {"loss": _relative(ours["loss"], theirs["loss"]), "terms": rows,
              "gradient": float((g_ours - g_theirs).norm() / g_theirs.norm().clamp_min(1e-30)),
              "cosine": float(g_ours @ g_theirs / (g_ours.norm() * g_theirs.norm()).clamp_min(1e-30)),
              "gradient_norm": float(g_theirs.norm()), "tolerances": [value_tol, grad_tol]}
    result["ok"] = (max([result["loss"], *rows.values()]) <= value_tol and result["gradient"] <= grad_tol
                    and result["gradient_norm"] > 0)
    return result


def report(result: Dict, codebase: str) -> str:
    lines = [f"{codebase} {result['checkout']} (reference loss lines from {result['reference']})",
             f"model {result['model']} on {result['device']} in {result['dtype']}",
             f"drop-in vs the script's own loss lines (relative differences; gradient: relative L2 over the "
             f"LoRA parameters; tolerances {result['tolerances'][0]:g} / {result['tolerances'][1]:g})",
             f"  loss {result['loss']:.2e}"]
    lines += [f"  {key} {value:.2e}" for key, value in result["terms"].items()]
    lines.append(f"  gradient {result['gradient']:.2e} (cosine {result['cosine']:.6f}, norm {result['gradient_norm']:.3e})")
    lines.append(f"PASS: the patched loss reproduces {codebase}'s" if result["ok"]
                 else f"FAIL: MISMATCH: the patched loss does not reproduce {codebase}'s here")
    return "\n".join(lines)


def common_arguments(parser: argparse.ArgumentParser, checkout: str, example: str) -> None:
    parser.add_argument(checkout, required=True, help="the checkout (holds its scripts/ and config/)")
    parser.add_argument("--config", required=True, help=f"path.py:function, e.g. {example}")
    parser.add_argument("--model", help="override config.pretrained.model (hub id or local diffusers folder)")
    parser.add_argument("--reference_script", help="an unmodified training script (default: the checkout's, or git HEAD's)")
    parser.add_argument("--resolution", type=int, help="override config.resolution")
    parser.add_argument("--prompt", action="append", help="a prompt of the batch (repeatable)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="fp32", help="weights dtype: fp32 (default, tightest check), bf16, fp16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result as JSON here")


def setup(args, root: Path, package: str):
    """The checkout on sys.path, its config (with the overrides), the pipeline, device and dtype."""
    from ..models.sd3 import load_pipeline, resolve_dtype

    if not (root / package).is_dir():
        raise FileNotFoundError(f"{root} is not the expected checkout (no {package}/ in it)")
    config = load_config(root, args.config)
    if args.model is not None:
        config.pretrained.model = args.model
    if args.resolution is not None:
        config.resolution = args.resolution
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype)
    pipeline = load_pipeline(config.pretrained.model, dtype=dtype).to(device)
    return config, pipeline, device, dtype


def encode(pipeline, prompts: List[str], device):
    embeds, _, pooled, _ = pipeline.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=128)
    return embeds, pooled


def main_for(check: Callable, parser: argparse.ArgumentParser, codebase: str, argv=None) -> int:
    args = parser.parse_args(argv)
    result = check(args)
    print(report(result, codebase))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1

