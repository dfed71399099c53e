"""End-to-end training-step benchmark at SD3.5-Medium shape, random weights, no download.

Builds diffusers' real ``SD3Transformer2DModel`` with SD3.5-Medium's config
(random weights), adds LoRA r=32 / alpha 64 on the attention projections
("default" trained, "old" the behaviour policy; the reference is the base with
adapters disabled), turns on gradient checkpointing, and times one optimizer
step per estimator on random latents and prompt embeddings of the real shapes
(T5+CLIP 333 tokens x 4096, pooled 2048):

  elbo         the recipe: K draws per sample batched as [B*K, 16, 64, 64];
               old and reference velocities without grad, the current one with
               grad; ek.policy_loss (pepg, adaptive, girsanov) -> backward -> AdamW.
  trajectory   FlowGRPO's estimator: T SDE steps per sample, each one forward
               with grad (two with CFG: conditional + unconditional) and the
               fused sde_step log-prob; PPO clip; backward per step -> AdamW.

Reports seconds and peak memory per optimizer step and per sample, writes JSON
(rewritten after every row, so a run stopped by a time limit's SIGINT keeps what
it measured). The weights are created on the device itself (no 2.5B-parameter
initialisation on the host). Latents are 64x64 (512 px, the study's resolution).
``--smoke`` uses a 2-layer, narrow transformer and 8x8 latents (CPU, seconds).
Needs diffusers; without it the script says so in one line and exits 3.

    python benchmarks/bench_train_step.py --out results.json            # GPU, SD3.5-M
    python benchmarks/bench_train_step.py --smoke --device cpu          # CI
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(1, str(ROOT))

import elbo_kernels as ek  # noqa: E402
from bench_kernels import write_json  # noqa: E402  (one atomic JSON writer for the benchmarks)

EXIT_NO_DIFFUSERS = 3

# stabilityai/stable-diffusion-3.5-medium transformer/config.json (the fields that shape compute).
SD35_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SMOKE = dict(
    sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16, out_channels=16,
    pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm",
)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def build(config: dict, dtype: torch.dtype, device: str, rank: int):
    from diffusers import SD3Transformer2DModel

    from elbo_kernels.models.lora import add_lora

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds on a GPU, not minutes on the host
        model = SD3Transformer2DModel(**config)
    model = model.to(dtype=dtype)
    model.requires_grad_(False)
    add_lora(model, LORA_TARGETS, rank=rank, alpha=2 * rank, adapter_names=("default", "old"))
    for name, p in model.named_parameters():
        if "lora_" in name and ".default." in name:
            p.data = p.data.float()  # LoRA kept in fp32, as the trainer does
            p.requires_grad_(True)
    model.enable_gradient_checkpointing()
    model.train()
    return model


def velocity(model, x, t, prompt, pooled, adapter):
    """v(x, t) under an adapter ("default", "old") or the base model (None)."""
    if adapter is None:
        model.disable_adapters()
    else:
        model.enable_adapters()
        model.set_adapter(adapter)
    try:
        return model(hidden_states=x, timestep=t * 1000, encoder_hidden_states=prompt,
                     pooled_projections=pooled, return_dict=False)[0]
    finally:
        model.enable_adapters()
        model.set_adapter("default")


def elbo_step(model, opt, batch, k: int):
    x0, prompt, pooled, adv = batch
    b = x0.shape[0]
    t = torch.rand(b * k, device=x0.device) * 0.9 + 0.05
    eps = torch.randn((b * k,) + x0.shape[1:], device=x0.device, dtype=x0.dtype)
    x_t = ek.noising(x0, t, eps)
    prompt_k, pooled_k = prompt.repeat_interleave(k, 0), pooled.repeat_interleave(k, 0)
    with torch.no_grad():
        v_old = velocity(model, x_t, t, prompt_k, pooled_k, "old")
        v_ref = velocity(model, x_t, t, prompt_k, pooled_k, None)
    v = velocity(model, x_t, t, prompt_k, pooled_k, "default")
    loss, _ = ek.policy_loss(v, v_old, v_ref, x0, eps, t, adv.repeat_interleave(k, 0),
                             objective="pepg", weighting="adaptive", kl="girsanov")
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def trajectory_step(model, opt, batch, steps: int, cfg: bool):
    x0, prompt, pooled, adv = batch
    b = x0.shape[0]
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=x0.device)
    latents = torch.randn((b, steps + 1) + x0.shape[1:], device=x0.device, dtype=x0.dtype)
    old_log_prob = torch.zeros(b, steps, device=x0.device)
    for j in range(steps):
        x, x_prev = latents[:, j], latents[:, j + 1]
        sigma = sigmas[j].expand(b)
        if cfg:
            v_both = velocity(model, torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([prompt, 0 * prompt]),
                              torch.cat([pooled, 0 * pooled]), "default")
            v_cond, v_uncond = v_both.chunk(2)
            v = v_uncond + 4.5 * (v_cond - v_uncond)
        else:
            v = velocity(model, x, sigma, prompt, pooled, "default")
        log_prob, _, _ = ek.sde_step_log_prob(v, x, x_prev, sigma, sigmas[j + 1].expand(b), sigma_max=float(sigmas[1]))
        ratio = torch.exp(log_prob - old_log_prob[:, j])
        a = adv.clamp(-5, 5)
        loss = torch.maximum(-a * ratio, -a * ratio.clamp(1 - 1e-4, 1 + 1e-4)).mean() / steps
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn, device: str, repeats: int) -> dict:
    fn()  # warm-up: autotuning, compilation, allocator
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"seconds": sorted(times)[len(times) // 2], "peak_bytes": peak}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="2-layer transformer, 8x8 latents")
    parser.add_argument("--batch", type=int, default=None, help="samples per optimizer step (default 2)")
    parser.add_argument("--draws", type=int, default=None, help="ELBO draws K per sample (default 4, smoke 2)")
    parser.add_argument("--steps", type=int, default=None, help="trajectory SDE steps T (default 10, smoke 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per row after one warm-up (default 2)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        import diffusers  # noqa: F401
    except ImportError as exc:
        print(f"bench_train_step: diffusers is not importable ({exc}); it builds the SD3 transformer. "
              "Install it, or carry wheels to a machine without an index (scripts/gpu_wheels.sh).", file=sys.stderr)
        raise SystemExit(EXIT_NO_DIFFUSERS)
    device = args.device
    config = SMOKE if args.smoke else SD35_MEDIUM
    dtype = torch.float32 if args.smoke else torch.bfloat16
    batch, k = args.batch or 2, args.draws or (2 if args.smoke else 4)
    steps, repeats = args.steps or (2 if args.smoke else 10), args.repeats or (1 if args.smoke else 2)
    size = 8 if args.smoke else 64  # 512 px; sample_size (128) is the 1024 px default of the config
    tokens, width = (8, config["joint_attention_dim"]) if args.smoke else (333, 4096)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(batch, 16, size, size, generator=g).to(device, dtype),
            torch.randn(batch, tokens, width, generator=g).to(device, dtype),
            torch.randn(batch, config["pooled_projection_dim"], generator=g).to(device, dtype),
            torch.randn(batch, generator=g).to(device))
    model = build(config, dtype, device, rank=4 if args.smoke else 32)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rows = []
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "config": "smoke" if args.smoke else "SD3.5-Medium", "dtype": str(dtype), "batch": batch,
              "draws": k, "steps": steps, "repeats": repeats, "latent": [16, size, size],
              "lora_rank": 4 if args.smoke else 32, "complete": False, "rows": rows}
    runs = [("elbo", f"K={k}", lambda: elbo_step(model, opt, data, k))]
    for cfg in (False, True):
        runs.append(("trajectory", f"T={steps} cfg={'on' if cfg else 'off'}",
                     lambda cfg=cfg: trajectory_step(model, opt, data, steps, cfg)))
    try:
        for name, detail, fn in runs:
            timing = timed(fn, device, repeats)
            row = {"estimator": name, "detail": detail, **timing, "seconds_per_sample": timing["seconds"] / batch}
            rows.append(row)
            peak = f"{row['peak_bytes'] / 2**30:.1f} GiB" if row["peak_bytes"] else "n/a"
            print(f"{name:<11} {detail:<16} {row['seconds']:8.3f} s/step  {row['seconds_per_sample']:8.3f} s/sample  "
                  f"peak {peak}", flush=True)
            _write(args.out, result)
    except KeyboardInterrupt:  # a time limit's SIGINT: keep the rows measured so far
        print(f"interrupted after {len(rows)} rows", file=sys.stderr, flush=True)
        _write(args.out, result)
        raise SystemExit(130)
    result["complete"] = True
    _write(args.out, result)
    return result


def _write(path, result: dict) -> None:
    if path is not None:
        write_json(Path(path), result)


if __name__ == "__main__":
    main()
