"""Statistics and the report of benchmarks/variance_study.py: bootstrap intervals, variance.md and variance.png."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import List, Optional

import torch

BOOTSTRAP = 1000


def _statistic(x: torch.Tensor, kind: str) -> float:
    if kind == "log_ratio":  # [R, B]: the draw variance per sample, averaged over samples
        return float(x.var(0).mean())
    if kind == "trace":  # [R, P]: the trace of the covariance
        return float(x.var(0).sum())
    return float(x.var())  # [R]


def _trace_from_gram(gram: torch.Tensor, index: torch.Tensor) -> float:
    """tr Cov of the rows ``index`` from the Gram matrix X X^T: (n / (n - 1)) (mean |x_i|^2 - |mean x_i|^2)."""
    n = index.numel()
    sub = gram[index][:, index]
    return float((sub.diagonal().mean() - sub.sum() / n ** 2) * n / (n - 1))


def bootstrap_ratio(base: torch.Tensor, mine: torch.Tensor, kind: str, resamples: int = BOOTSTRAP,
                    seed: int = 0) -> dict:
    """stat(base) / stat(mine) and its 95% percentile-bootstrap interval (repeats resampled independently)."""
    generator = torch.Generator().manual_seed(seed)
    ratio = _statistic(base, kind) / _statistic(mine, kind)
    r_base, r_mine = base.shape[0], mine.shape[0]
    if kind == "trace":  # resampling rows of [R, P] through the [R, R] Gram matrices: no P-sized copies
        g_base, g_mine = base @ base.T, mine @ mine.T

        def stat(which, index):
            return _trace_from_gram(g_base if which == "base" else g_mine, index)
    else:
        def stat(which, index):
            return _statistic((base if which == "base" else mine)[index], kind)
    draws = []
    for _ in range(resamples):
        i = torch.randint(0, r_base, (r_base,), generator=generator)
        j = torch.randint(0, r_mine, (r_mine,), generator=generator)
        draws.append(stat("base", i) / stat("mine", j))
    draws = torch.tensor(draws)
    return {"ratio": ratio, "lo": float(draws.quantile(0.025)), "hi": float(draws.quantile(0.975))}


def median_interval(values: List[float], resamples: int = 2000, seed: int = 0) -> Optional[dict]:
    """Median and its 95% percentile-bootstrap interval (None for no values)."""
    if not values:
        return None
    generator = torch.Generator().manual_seed(seed)
    x = torch.tensor(values, dtype=torch.float64)
    # statistics.median, not torch's (torch returns the lower of the two middle values for even counts).
    meds = torch.tensor([statistics.median(x[torch.randint(0, len(values), (len(values),),
                                                             generator=generator)].tolist()) for _ in range(resamples)])
    return {"median": statistics.median(values), "lo": float(meds.quantile(0.025)), "hi": float(meds.quantile(0.975))}


def _ci(r: dict) -> str:
    return f"{r['ratio']:.2f}x [{r['lo']:.2f}, {r['hi']:.2f}]"


def write_markdown(result: dict, path: Path) -> None:
    s = result["settings"]
    lines = [
        "# ELBO estimator variance on DigitEval: the trainer's policies",
        "",
        f"Current policy = the default recipe's LoRA after {s['train_epochs']} epochs; old policy = the base model. "
        f"Fixed batch of B={s['batch']} final samples ({s['prompts']} digits x {s['group_size']}) drawn by the old "
        f"policy; {s['repeats']} repeats per method. Var(l): draw variance of the per-sample log-ratio estimate "
        "l = mean over K draws of w (e_theta - e_old), averaged over samples. tr Cov(g) and Var(g . u): the pepg "
        "gradient (no KL) on the LoRA parameters. Reduction = default / method at the same K (equal transformer "
        "rows), with 95% bootstrap intervals over the repeats. Command: `" + s["command"] + "`.",
        "",
        "| K | method | mean l | Var(l) | reduction (l) | tr Cov(g) | reduction (trace) | reduction (g . u) | best c on e_old | CV bound (l) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['K']} | {r['method']} | {r['log_ratio_mean']:.2e} | {r['log_ratio_var']:.3e} | "
            f"{_ci(r['log_ratio_reduction'])} | {r['grad_trace_var']:.3e} | {_ci(r['grad_trace_reduction'])} | "
            f"{_ci(r['grad_proj_reduction'])} | {r['cv_best_c_median']:.3f} | {r['cv_reduction_upper_bound']:.3f}x |")
    lines += ["", "\"best c on e_old\": median over samples of the coefficient c minimising Var(e_theta - c e_old) "
              "on the draws themselves; \"CV bound\": Var(l) / Var(e_theta - c e_old) at that c, an upper bound on "
              "what re-weighting the old policy's ELBO as a control variate can give (c = 1 is l itself).", "",
              "## Per grid timestep: one draw of l", "",
              "| t | mean l | Var over eps | E[l^2] | Var of the per-sample means | corr(l(eps), l(-eps)) | proposal q |",
              "|---|---|---|---|---|---|---|"]
    for p, q in zip(result["per_timestep"], result["importance_proposal"]):
        lines.append(f"| {p['t']:.2f} | {p['log_ratio_mean']:.2e} | {p['log_ratio_var']:.3e} | "
                     f"{p['log_ratio_second_moment']:.3e} | {p['between_samples_var']:.3e} | "
                     f"{p['antithetic_corr']:.2f} | {q:.3f} |")
    bl, bg = result["best_log_ratio"], result["best_gradient"]
    lines += ["", f"Best log-ratio reduction at K={bl['K']}: **{_ci(bl['log_ratio_reduction'])}** ({bl['method']}). "
              f"Best gradient (trace) reduction: **{_ci(bg['grad_trace_reduction'])}** ({bg['method']})."]
    ttt = result.get("time_to_target")
    if ttt:
        lines += ["", "## Time to DigitEval 0.9 at diversity >= 0.7 (default recipe, with and without the best option)",
                  "", "| variant | options | reached | transformer rows, median [95% CI] | CPU s (training), median [95% CI] | stops |",
                  "|---|---|---|---|---|---|"]
        for name, v in ttt.items():
            def med(m, spec):
                return "-" if m is None else f"{m['median']:{spec}} [{m['lo']:{spec}}, {m['hi']:{spec}}]"
            opts = ", ".join(f"{k}={val}" for k, val in v["overrides"].items()) or "(defaults)"
            lines.append(f"| {name} | {opts} | {v['reached']} | {med(v['rows_median'], '.0f')} | "
                         f"{med(v['cpu_median'], '.1f')} | {', '.join(r['stop'] for r in v['runs'])} |")
    lines += ["", f"Run time: {s['seconds']:.0f} s, one intra-op thread per process."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ks = sorted({r["K"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, title in ((axes[0], "log_ratio_reduction", "log-ratio variance reduction"),
                           (axes[1], "grad_trace_reduction", "pepg gradient tr Cov reduction")):
        methods = [r["method"] for r in rows if r["K"] == ks[0]]
        width = 0.8 / len(ks)
        for j, k in enumerate(ks):
            mine = {r["method"]: r[key] for r in rows if r["K"] == k}
            y = [mine[m]["ratio"] for m in methods]
            err = [[mine[m]["ratio"] - mine[m]["lo"] for m in methods], [mine[m]["hi"] - mine[m]["ratio"] for m in methods]]
            ax.bar([i + j * width for i in range(len(methods))], y, width, yerr=err, label=f"K={k}", capsize=2)
        ax.axhline(1, color="k", lw=0.8)
        ax.axhline(2, color="r", lw=0.8, ls="--", label="2x target")
        ax.set_xticks([i + width * (len(ks) - 1) / 2 for i in range(len(methods))])
        ax.set_xticklabels(methods, rotation=35, ha="right", fontsize=8)
        ax.set_yscale("log", base=2)
        ax.set_title(title + " (equal rows, 95% bootstrap)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
