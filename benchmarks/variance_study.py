"""Variance of the ELBO log-ratio and of the pepg policy gradient, per draw option, on DigitEval.

No training. The pretrained DigitEval transformer carries two LoRA adapters (r=8):

    current  theta = base + a random LoRA (B ~ N(0, THETA_SCALE^2), peft's gaussian A)
    old      theta + one sign-like step of size OLD_STEP on every LoRA parameter, the size of
             one AdamW step at the trainer's lr (3e-3)

A fixed batch of B final samples is drawn once with the old policy (Euler ODE, 10 steps, no
CFG), as the trainer's rollouts are. Then for each configuration

    K draws per sample            1, 2, 4, 8
    timestep sampler              grid (the rollout's own 10-step grid), uniform, stratified, logit_normal
    noise                         iid; antithetic (sample_noise's mode: eps, -eps on consecutive draws,
                                  each draw with its own t); antithetic_paired_t (the same pairs, and the
                                  two draws of a pair share one t: K/2 timesteps, each used twice)

the estimate is repeated R times with fresh (t, eps) on the same x0 and parameters:

    log-ratio  l_b = mean over the K draws of (e_theta - e_old), adaptive weighting, per sample b;
               reported: the draw variance Var_r(l_b) averaged over the B samples
    gradient   d/d(LoRA params) of the trainer's pepg loss (no KL) on the batch, with per-prompt
               advantages (reward - group mean); reported: the variance of its projection on one
               fixed random unit direction, and the trace of its covariance (sum of per-parameter
               variances)

Within one K every configuration costs the same transformer evaluations (B*K rows, times two
forwards and one backward), so the ratios in one column are at equal evaluations. "var x K"
puts different K on one scale (for iid draws it is constant in K).

    python benchmarks/variance_study.py           # writes benchmarks/results/variance.{json,md,png}
    python benchmarks/variance_study.py --quick   # CI smoke: K in (2,), 2 samplers, 4 repeats
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

THETA_SCALE = 1e-2
OLD_STEP = 3e-3
SAMPLERS = ("grid", "uniform", "stratified", "logit_normal")
NOISES = ("iid", "antithetic", "antithetic_paired_t")
PER_T = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def setup(batch_prompts: int, group_size: int, seed: int = 0):
    """(model, grid, x0 [B, 1, 8, 8], prompts, advantages [B], trained parameters, direction)."""
    from elbo_kernels.models import digits
    from elbo_kernels.models.lora import active_adapter, add_lora, adapter_parameters
    from elbo_kernels.sampling import ode_sample, timestep_grid

    model = digits.DigitsModel.load()
    transformer = model.transformer
    transformer.requires_grad_(False)
    add_lora(transformer, model.lora_target_modules, rank=8, alpha=16.0, adapter_names=("default", "old"),
             init_seed=seed)
    generator = torch.Generator().manual_seed(seed)
    current = adapter_parameters(transformer, "default")
    old = adapter_parameters(transformer, "old")
    with torch.no_grad():
        for name, p in current.items():
            if "lora_B" in name:
                p.copy_(THETA_SCALE * torch.randn(p.shape, generator=generator))
        for name, p in old.items():
            sign = torch.randint(0, 2, p.shape, generator=generator).float() * 2 - 1
            p.copy_(current[name] + OLD_STEP * sign)
    params = [current[name] for name in sorted(current)]
    for p in params:
        p.requires_grad_(True)

    prompts = [digits.prompt(d) for d in range(batch_prompts) for _ in range(group_size)]
    cond = model.encode_prompts(prompts)
    grid = timestep_grid(10)
    x1 = torch.randn((len(prompts),) + tuple(model.latent_shape), generator=generator)
    with torch.no_grad(), active_adapter(transformer, "old"):
        x0 = ode_sample(lambda x, t: model.velocity(x, t, cond), x1, grid)
    rewards, _ = digits.reward_fn(model.decode(x0), prompts, None)
    reward = torch.as_tensor(rewards["avg"], dtype=torch.float32).reshape(batch_prompts, group_size)
    advantages = (reward - reward.mean(1, keepdim=True)).reshape(-1)
    numel = sum(p.numel() for p in params)
    direction = torch.randn(numel, generator=generator)
    direction /= direction.norm()
    return model, grid, x0, prompts, advantages, params, direction


def draws(b: int, k: int, sampler: str, noise: str, grid, shape, generator):
    """t [B*K] and eps [B*K, *S]; consecutive rows are a sample's K draws."""
    from elbo_kernels.estimators import sample_noise, sample_timesteps

    if noise == "antithetic_paired_t":
        t = sample_timesteps(b, k, sampler=sampler, grid=grid, generator=generator, paired=True)
    else:
        t = sample_timesteps(b, k, sampler=sampler, grid=grid, generator=generator)
    mode = "iid" if noise == "iid" else "antithetic"
    eps = sample_noise((b * k,) + tuple(shape), k, mode=mode, generator=generator)
    return t.reshape(-1).float(), eps


def _log_ratio(model, x0, cond, t, eps, adapter_old="old"):
    """Per-draw e_theta - e_old at one set of draws (no gradient)."""
    from elbo_kernels.estimators import elbo, noising
    from elbo_kernels.models.lora import active_adapter

    x_t = noising(x0, t, eps)
    with torch.no_grad():
        v = model.velocity(x_t, t, cond)
        with active_adapter(model.transformer, adapter_old):
            v_old = model.velocity(x_t, t, cond)
    return elbo(v, x0, eps, t).double(), elbo(v_old, x0, eps, t).double()


def measure(setup_state, k: int, sampler: str, noise: str, repeats: int, seed: int) -> dict:
    from elbo_kernels.estimators import elbo, noising
    from elbo_kernels.models.lora import active_adapter
    from elbo_kernels.objectives import policy_loss

    model, grid, x0, prompts, advantages, params, direction = setup_state
    transformer = model.transformer
    b = x0.shape[0]
    cond = model.encode_prompts([p for p in prompts for _ in range(k)])
    adv = advantages.repeat_interleave(k)
    generator = torch.Generator().manual_seed(seed)
    log_ratios, projections, grads = [], [], []
    for _ in range(repeats):
        t, eps = draws(b, k, sampler, "iid" if noise == "independent" else noise, grid, x0.shape[1:], generator)
        if noise == "independent":
            # No common random numbers: e_old from its own draws. Same evaluations (two forwards per draw).
            t_old, eps_old = draws(b, k, sampler, "iid", grid, x0.shape[1:], generator)
            e_theta, _ = _log_ratio(model, x0, cond, t, eps)
            _, e_old = _log_ratio(model, x0, cond, t_old, eps_old)
            log_ratios.append((e_theta - e_old).reshape(b, k).mean(1))
            continue
        x_t = noising(x0, t, eps)
        with torch.no_grad(), active_adapter(transformer, "old"):
            v_old = model.velocity(x_t, t, cond)
        v = model.velocity(x_t, t, cond)
        e_theta = elbo(v.detach(), x0, eps, t)
        e_old = elbo(v_old, x0, eps, t)
        log_ratios.append((e_theta - e_old).reshape(b, k).mean(1).double())
        loss, _ = policy_loss(v, v_old, None, x0, eps, t, adv, objective="pepg", kl=None)
        grad = torch.autograd.grad(loss, params)
        flat = torch.cat([g.reshape(-1) for g in grad]).double()
        grads.append(flat)
        projections.append(float(flat @ direction.double()))
    log_ratios = torch.stack(log_ratios)  # [R, B]
    lr_var = float(log_ratios.var(0).mean())
    row = {
        "K": k, "sampler": sampler, "noise": noise, "repeats": repeats, "rows_per_estimate": b * k,
        "log_ratio_mean": float(log_ratios.mean()), "log_ratio_var": lr_var, "log_ratio_var_x_K": lr_var * k,
        "grad_proj_var": None, "grad_trace_var": None, "grad_mean_norm": None,
    }
    if grads:
        grads = torch.stack(grads)  # [R, P]
        projections = torch.tensor(projections, dtype=torch.float64)
        row.update(grad_proj_var=float(projections.var()), grad_trace_var=float(grads.var(0).sum()),
                   grad_mean_norm=float(grads.mean(0).norm()))
    return row


def per_timestep(setup_state, repeats: int, seed: int = 7) -> list:
    """At fixed t: Var over eps of one draw's l, and how much an (eps, -eps) pair cancels.

    pair_reduction = (Var(l) / 2) / Var((l(eps) + l(-eps)) / 2) = 1 / (1 + corr): the pair's gain over
    two iid draws at this t (1 = no cancellation; 2 needs corr(l(eps), l(-eps)) = -0.5).
    """
    model, _, x0, prompts, *_ = setup_state
    b = x0.shape[0]
    cond = model.encode_prompts(prompts)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for value in PER_T:
        t = torch.full((b,), value)
        plus, minus = [], []
        for _ in range(repeats):
            eps = torch.randn((b,) + tuple(x0.shape[1:]), generator=generator)
            e_theta, e_old = _log_ratio(model, x0, cond, t, eps)
            plus.append(e_theta - e_old)
            e_theta, e_old = _log_ratio(model, x0, cond, t, -eps)
            minus.append(e_theta - e_old)
        plus, minus = torch.stack(plus), torch.stack(minus)  # [R, B]
        cov = ((plus - plus.mean(0)) * (minus - minus.mean(0))).sum(0) / (repeats - 1)
        corr = cov / (plus.std(0) * minus.std(0))
        var = plus.var(0).mean()
        pair = ((plus + minus) / 2).var(0).mean()
        out.append({"t": value, "log_ratio_mean": float(plus.mean()), "log_ratio_var": float(var),
                    "antithetic_corr": float(corr.mean()), "pair_reduction": float(var / 2 / pair)})
    return out


def write_markdown(result: dict, path: Path) -> None:
    rows = result["rows"]
    ks = sorted({r["K"] for r in rows})
    lines = [
        "# ELBO estimator variance on DigitEval (pretrained model, no training)",
        "",
        f"Fixed batch of B={result['settings']['batch']} final samples; {result['settings']['repeats']} repeats per "
        "configuration; old policy = current + one sign step of 3e-3 on every LoRA parameter. "
        "Variance of the per-sample log-ratio estimate l (mean of K draws of e_theta - e_old, adaptive weighting), "
        "averaged over samples; variance of the pepg gradient projected on a fixed random direction, and the trace of "
        "its covariance. Reduction = iid variance / this configuration's variance at the same K and sampler (equal "
        "transformer evaluations).",
        "",
        "| K | sampler | noise | mean l | Var(l) | Var(l) x K | reduction (l) | Var(grad . u) | reduction (grad . u) | tr Cov(grad) | reduction (trace) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    iid = {(r["K"], r["sampler"]): r for r in rows if r["noise"] == "iid"}

    def ratio(base, value):
        return "-" if base is None or value is None else f"{base / value:.2f}x"

    def num(value, spec):
        return "-" if value is None else format(value, spec)

    for k in ks:
        for r in [r for r in rows if r["K"] == k]:
            base = iid[(k, r["sampler"])]
            lines.append(
                f"| {k} | {r['sampler']} | {r['noise']} | {r['log_ratio_mean']:.2e} | {r['log_ratio_var']:.3e} | "
                f"{r['log_ratio_var_x_K']:.3e} | {ratio(base['log_ratio_var'], r['log_ratio_var'])} | "
                f"{num(r['grad_proj_var'], '.3e')} | {ratio(base['grad_proj_var'], r['grad_proj_var'])} | "
                f"{num(r['grad_trace_var'], '.3e')} | {ratio(base['grad_trace_var'], r['grad_trace_var'])} |"
            )
    lines += ["", "\"independent\" = e_old from its own (t, eps) draws instead of the current policy's: what the "
              "common random numbers of l = e_theta - e_old are worth (its reduction column is < 1: iid with shared "
              "draws is that many times better).", "",
              "## Why antithetic noise cancels little: one draw at fixed t", "",
              "| t | mean l | Var over eps of l | corr(l(eps), l(-eps)) | pair reduction 1/(1+corr) |",
              "|---|---|---|---|---|"]
    for r in result["per_timestep"]:
        lines.append(f"| {r['t']} | {r['log_ratio_mean']:.2e} | {r['log_ratio_var']:.3e} | "
                     f"{r['antithetic_corr']:.2f} | {r['pair_reduction']:.2f}x |")
    best = result["best_reduction"]
    lines += ["", f"Largest log-ratio variance reduction at equal evaluations: **{best['factor']:.2f}x** "
              f"({best['noise']}, {best['sampler']}, K={best['K']}); pepg-gradient reduction in that configuration: "
              f"{best['grad_proj_factor']:.2f}x (projection), {best['grad_trace_factor']:.2f}x (trace).",
              "", f"Run: {result['settings']['command']}, {result['settings']['seconds']:.0f} s."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    samplers = sorted({r["sampler"] for r in rows}, key=SAMPLERS.index)
    fig, axes = plt.subplots(2, len(samplers), figsize=(4.2 * len(samplers), 7.5), squeeze=False)
    styles = {"iid": ("o-", "C0"), "antithetic": ("s--", "C1"), "antithetic_paired_t": ("^-", "C2")}
    for j, sampler in enumerate(samplers):
        for noise, (style, color) in styles.items():
            pts = sorted((r["K"], r["log_ratio_var"], r["grad_proj_var"]) for r in rows
                         if r["sampler"] == sampler and r["noise"] == noise)
            if not pts:
                continue
            ks, lv, gv = zip(*pts)
            axes[0][j].loglog(ks, lv, style, color=color, label=noise, base=2)
            axes[1][j].loglog(ks, gv, style, color=color, label=noise, base=2)
        axes[0][j].set_title(f"t sampler: {sampler}")
        axes[1][j].set_xlabel("K draws per sample (equal evaluations within a K)")
        for ax in (axes[0][j], axes[1][j]):
            ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("Var of log-ratio estimate l")
    axes[1][0].set_ylabel("Var of pepg gradient . u")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--repeats", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ks, samplers, repeats, prompts, group = (1, 2, 4, 8), SAMPLERS, args.repeats, 5, 4
    if args.quick:
        ks, samplers, repeats, prompts, group = (2,), ("grid", "uniform"), 4, 2, 2
    start = time.perf_counter()
    state = setup(prompts, group)

    def report(r):
        print(f"K={r['K']} {r['sampler']:12s} {r['noise']:20s} Var(l)={r['log_ratio_var']:.3e} "
              f"Var(g.u)={r['grad_proj_var'] or float('nan'):.3e}", flush=True)

    rows = []
    for k in ks:
        for sampler in samplers:
            for noise in NOISES:
                if noise != "iid" and k % 2:
                    continue
                seed = 1000 * k + 10 * SAMPLERS.index(sampler) + NOISES.index(noise)
                rows.append(measure(state, k, sampler, noise, repeats, seed))
                report(rows[-1])
        rows.append(measure(state, k, "uniform", "independent", repeats, 1000 * k + 99))
        report(rows[-1])
    iid = {(r["K"], r["sampler"]): r for r in rows if r["noise"] == "iid"}
    candidates = [dict(K=r["K"], sampler=r["sampler"], noise=r["noise"],
                       factor=iid[(r["K"], r["sampler"])]["log_ratio_var"] / r["log_ratio_var"],
                       grad_proj_factor=iid[(r["K"], r["sampler"])]["grad_proj_var"] / r["grad_proj_var"],
                       grad_trace_factor=iid[(r["K"], r["sampler"])]["grad_trace_var"] / r["grad_trace_var"])
                  for r in rows if r["noise"] in ("antithetic", "antithetic_paired_t")]
    per_t = per_timestep(state, repeats)
    for r in per_t:
        print(f"t={r['t']}: Var(l)={r['log_ratio_var']:.3e} corr(l(eps), l(-eps))={r['antithetic_corr']:.2f} "
              f"pair reduction {r['pair_reduction']:.2f}x")
    result = {
        "rows": rows,
        "best_reduction": max(candidates, key=lambda c: c["factor"]) if candidates else None,
        "reductions": candidates,
        "per_timestep": per_t,
        "common_random_numbers_gain": {r["K"]: r["log_ratio_var"] / iid[(r["K"], "uniform")]["log_ratio_var"]
                                       for r in rows if r["noise"] == "independent"},
        "settings": {"batch": prompts * group, "prompts": prompts, "group_size": group, "repeats": repeats,
                     "theta_lora_B_std": THETA_SCALE, "old_step": OLD_STEP, "lora_rank": 8, "weighting": "adaptive",
                     "objective": "pepg (no KL)", "threads": 1,
                     "command": "python benchmarks/variance_study.py" + (" --quick" if args.quick else ""),
                     "seconds": time.perf_counter() - start},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variance.json").write_text(json.dumps(result, indent=1))
    if result["best_reduction"]:
        write_markdown(result, out / "variance.md")
        write_plot(result, out / "variance.png")
        best = result["best_reduction"]
        print(f"largest log-ratio variance reduction at equal evaluations: {best['factor']:.2f}x "
              f"({best['noise']}, {best['sampler']}, K={best['K']})")
    return result


if __name__ == "__main__":
    main()
