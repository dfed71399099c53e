"""Reading the design-space benchmark's runs, and its tables and plot (benchmarks/design_space.py runs them)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

from design_space_stats import counts, median_interval, ratio_interval

TARGET = 0.9
MIN_DIVERSITY = 0.7
COSTS = ("work_rows", "cpu_seconds", "transformer_rows", "train_seconds", "epoch")
# The study's claims, as (numerator method, denominator method, the study's factor, what it says).
STUDY = (
    ("baseline", "recipe", 4.6, "ELBO + ODE (recipe) vs FlowGRPO"),
    ("diffusionnft", "recipe", 2.0, "ELBO + ODE (recipe) vs DiffusionNFT"),
    ("recipe_sde", "recipe", 2.0, "ELBO + ODE vs ELBO + SDE rollouts"),
)


# ------------------------------------------------------------------------------------------------
# Reading a run.
# ------------------------------------------------------------------------------------------------
def summarize_run(run: dict) -> dict:
    """Costs at the first qualifying evaluation (score >= target with diversity >= 0.7), and the curve."""
    wall_train = 0.0
    curve = []
    for record in run["records"]:
        wall_train += sum(v for k, v in record.items() if k.startswith("seconds_"))
        if "score" not in record:
            continue
        curve.append({"epoch": record["epoch"], "score": record["score"], "diversity": record["diversity"],
                      "train_seconds": wall_train, "cpu_seconds": record["cpu_seconds_train"],
                      "transformer_rows": record["transformer_rows"], "work_rows": record["work_rows"]})
    target = run["target"]
    reached = next((p for p in curve if p["score"] >= target and p["diversity"] >= MIN_DIVERSITY), None)
    healthy = [p for p in curve if p["diversity"] >= MIN_DIVERSITY]
    skipped = sum(1 for r in run["records"] if r.get("skipped"))
    return {
        "lr": run["lr"], "beta": run["beta"], "seed": run["seed"], "stop": run["stop"], "metric": run["metric"],
        "epochs_run": len(run["records"]), "skipped_steps": skipped, "stable": reached is not None and skipped == 0,
        "reached": reached, "best_healthy": max(healthy, key=lambda p: p["score"]) if healthy else None,
        "last": curve[-1] if curve else None, "before": run["before"], "curve": curve,
        "wall_seconds": run["wall_seconds"],
    }


def choose_point(points: Dict[tuple, dict]) -> tuple:
    """(lr, beta) with the fewest work rows to the target among stable runs (ties: smaller lr, then smaller
    beta); with none stable, the highest score seen at diversity >= 0.7 (ties: larger lr)."""
    stable = [(s["reached"]["work_rows"], p) for p, s in points.items() if s["stable"]]
    if stable:
        return min(stable)[1]
    healthy = [((s["best_healthy"] or {}).get("score", 0.0), p) for p, s in points.items()]
    return max(healthy, key=lambda item: (item[0], item[1][0], -item[1][1]))[1]


def _compact(summary: dict) -> dict:
    reached = summary["reached"] or {}
    best = summary["best_healthy"] or {}
    return {"stop": summary["stop"], "epochs_run": summary["epochs_run"], "skipped_steps": summary["skipped_steps"],
            "work_rows": reached.get("work_rows"), "cpu_seconds": reached.get("cpu_seconds"),
            "best_score": best.get("score"), "best_diversity": best.get("diversity"),
            "last_score": (summary["last"] or {}).get("score"), "last_diversity": (summary["last"] or {}).get("diversity")}


def summarize_method(grid: Dict[str, dict], winner: tuple, missing: list, seed_runs: List[dict]) -> dict:
    """The sweep (compact), the winner and whether it is bracketed, and the seeds' statistics."""
    at = {key: [r["reached"][key] if r["reached"] else None for r in seed_runs] for key in COSTS}
    # A lower bound on each seed's cost to the target: the cost at the target, or all it spent without getting there.
    at_least = {key: [(r["reached"] or r["last"] or {}).get(key) for r in seed_runs] for key in ("work_rows", "cpu_seconds")}
    diversity = [r["reached"]["diversity"] if r["reached"] else None for r in seed_runs]
    return {
        "grid": {key: _compact(s) for key, s in grid.items()},
        "chosen": {"lr": winner[0], "beta": winner[1]}, "bracketed": not missing,
        "missing_neighbours": [list(p) for p in missing],
        "counts": counts([r["stop"] for r in seed_runs], [r["reached"] is not None for r in seed_runs]),
        "at_target": {key: {"values": values, **median_interval(values)} for key, values in at.items()},
        "at_least": at_least,
        "diversity_at_target": [d for d in diversity if d is not None],
        "runs": seed_runs,
    }


def baseline_name(result: dict) -> Optional[str]:
    """FlowGRPO as deployed when its base model is below the target, else FlowGRPO without CFG."""
    for name in ("flowgrpo", "flowgrpo_nocfg"):
        m = result["methods"].get(name)
        if m and not m.get("at_target_before_training"):
            return name
    return None


def speedups(result: dict) -> dict:
    """Speedups (baseline / method, medians over seeds) in work rows and CPU seconds, with 95% intervals,
    against the FlowGRPO baseline, and the study's three comparisons."""
    base = baseline_name(result)
    methods = result["methods"]
    out = {"baseline": base, "vs_baseline": {}, "study": []}

    def values(name, key):
        return methods[name]["at_target"][key]["values"]

    for name, m in methods.items():
        if base is None or "at_target" not in m or "at_target" not in methods[base]:
            continue
        out["vs_baseline"][name] = {key: ratio_interval(values(base, key), values(name, key))
                                    for key in ("work_rows", "cpu_seconds")}
        if methods[base]["counts"]["reached"] < methods[base]["counts"]["seeds"]:
            # Seeds of the baseline that never reached the target enter with what they spent: a lower bound.
            out["vs_baseline"][name]["lower_bound"] = {
                key: ratio_interval(methods[base]["at_least"][key], values(name, key)) for key in ("work_rows", "cpu_seconds")}
    for num, den, factor, what in STUDY:
        num = base if num == "baseline" else num
        if num is None or "at_target" not in methods.get(num, {}) or "at_target" not in methods.get(den, {}):
            continue
        row = {"comparison": what, "numerator": num, "denominator": den, "study_factor": factor,
               **{key: ratio_interval(values(num, key), values(den, key)) for key in ("work_rows", "cpu_seconds")}}
        if methods[num]["counts"]["reached"] < methods[num]["counts"]["seeds"]:
            row["lower_bound"] = {key: ratio_interval(methods[num]["at_least"][key], values(den, key))
                                  for key in ("work_rows", "cpu_seconds")}
        out["study"].append(row)
    return out


def finite_json(value):
    """JSON has no infinity: a target never reached is written as null."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return None if isinstance(value, float) and math.isinf(value) else value


# ------------------------------------------------------------------------------------------------
# Outputs.
# ------------------------------------------------------------------------------------------------
def fmt(value, digits=1, suffix=""):
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "not reached"
    if abs(value) >= 1000 and digits == 0:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def interval(stat: Optional[dict], digits=1, key="median", suffix="") -> str:
    if not stat or stat.get(key) is None:
        return "-"

    def one(value):  # a ratio with a never-reached numerator is inf: written "inf", not "not reached"
        return "inf" if key == "ratio" and value is not None and math.isinf(value) else fmt(value, digits, suffix)

    return f"{one(stat[key])} [{one(stat['low'])}, {one(stat['high'])}]"


def speedup_cell(row: dict, key: str) -> str:
    """The speedup with its interval; where the slower method's seeds did not all reach the target, also the
    lower bound that counts them with what they spent (">=")."""
    stat = row.get(key) or {}
    if stat.get("ratio") is not None and math.isinf(stat["ratio"]):
        cell = "undefined (the slower method's median did not reach the target)"
    else:
        cell = interval(stat, 2, "ratio", "x")
    bound = (row.get("lower_bound") or {}).get(key)
    if bound and bound.get("ratio") is not None:
        cell += f"; >= {interval(bound, 2, 'ratio', 'x')}"
    return cell


def verdict(row: dict) -> str:
    work = row["work_rows"]
    if row.get("lower_bound"):
        bound = row["lower_bound"]["work_rows"]
        if bound.get("low") is not None and bound["low"] > row["study_factor"]:
            return "larger than the study's (even the lower bound's interval is above it)"
        return "cannot tell: the slower method did not reach the target in every seed, and the lower bound is not above the study's"
    low, high, factor = work["low"], work["high"], row["study_factor"]
    if low is None:
        return "cannot tell (too few seeds reached the target)"
    if low <= factor <= high:
        if low > 1:
            return "consistent with the study's (its factor is inside the interval, which excludes 1)"
        return "not resolved: the interval holds the study's factor and also 1 (no difference)"
    if high < factor:
        if high < 1:
            return "reversed: the whole interval is below 1 (the study's winner is the slower one here)"
        if low <= 1:
            return "not reproduced: the interval is below the study's factor and holds 1 (no difference)"
        return "smaller than the study's, but the interval is above 1"
    return "larger than the study's (the whole interval is above its factor)"


def bracket_cell(m: dict) -> str:
    if m.get("follows"):
        return f"not swept: {m['follows']}'s chosen point"
    return "yes" if m["bracketed"] else "no, missing " + ", ".join(f"({lr:g}, {b:g})" for lr, b in m["missing_neighbours"])


def write_markdown(result: dict, path: Path) -> None:
    methods, sp, st = result["methods"], result["speedups"], result["settings"]
    base = sp["baseline"]
    lines = [
        f"# Design-space study on {result['task']}", "",
        f"Target score >= {result['target']} with diversity >= {result['min_diversity']} at the same evaluation; "
        f"each method evaluated as deployed. Medians over seeds {st['seeds']} at each method's chosen (lr, beta) "
        "with bootstrap 95% intervals in brackets; a seed that did not reach the target counts as not reached "
        "in the median and is counted in its own column. Work = transformer rows to the target, a backward "
        "pass counted as 2 forward rows and a CFG row as 2 rows; CPU s = training process CPU seconds of a "
        f"single-threaded worker. Speedup = {methods[base]['label'] if base else '-'} / method.", "",
        "| method | base model (score / diversity) | chosen lr / beta (published) | bracketed | reached / collapsed / "
        "budget | work rows to target | CPU s to target | epochs | speedup (work) | speedup (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        b = m["base"]
        pub = f"({m['published'][0]:g} / {m['published'][1]:g})"
        if m.get("at_target_before_training"):
            lines.append(f"| {m['label']} | {fmt(b['score'], 2)} / {fmt(b['diversity'], 2)} | not swept {pub} | - | "
                         "at the target before training | 0 | 0 | 0 | - | - |")
            continue
        if m.get("not_run"):
            lines.append(f"| {m['label']} | {fmt(b['score'], 2)} / {fmt(b['diversity'], 2)} | not run {pub} | - | - | "
                         "- | - | - | - | - |")
            continue
        c, at = m["counts"], m["at_target"]
        not_run = f" (+{m['seeds_not_run']} not run)" if m.get("seeds_not_run") else ""
        vs = sp["vs_baseline"].get(name, {})
        lines.append(
            f"| {m['label']} | {fmt(b['score'], 2)} / {fmt(b['diversity'], 2)} | {m['chosen']['lr']:g} / "
            f"{m['chosen']['beta']:g} {pub} | {bracket_cell(m)} | "
            f"{c['reached']} / {c['collapsed']} / {c['budget']}{not_run} | {interval(at['work_rows'], 0)} | "
            f"{interval(at['cpu_seconds'])} | {interval(at['epoch'], 0)} | "
            f"{speedup_cell(vs, 'work_rows')} | {speedup_cell(vs, 'cpu_seconds')} |")
    lines += ["", "## The study's factors", "",
              "| comparison | study | here, work rows | here, CPU s | verdict (work) |", "|---|---|---|---|---|"]
    for row in sp["study"]:
        lines.append(f"| {row['comparison']} ({methods[row['numerator']]['label']} / "
                     f"{methods[row['denominator']]['label']}) | {row['study_factor']:g}x | "
                     f"{speedup_cell(row, 'work_rows')} | {speedup_cell(row, 'cpu_seconds')} | "
                     f"{verdict(row)} |")
    lines += ["", "## Sweeps (seed 0)", "",
              "| method | lr | beta | stop | epochs | work rows to target | CPU s to target | best score (diversity) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        for key, s in sorted(m.get("grid", {}).items(), key=lambda kv: tuple(map(float, kv[0].split("/")))):
            lr, beta = key.split("/")
            mark = " **chosen**" if (float(lr), float(beta)) == (m["chosen"]["lr"], m["chosen"]["beta"]) else ""
            lines.append(f"| {m['label']} | {lr}{mark} | {beta} | {s['stop']} | {s['epochs_run']} | "
                         f"{fmt(s['work_rows'], 0)} | {fmt(s['cpu_seconds'])} | {fmt(s['best_score'], 2)} "
                         f"({fmt(s['best_diversity'], 2)}) |")
    lines += ["", "## Seeds at the chosen point", "", "| method | seed | stop | epochs | work rows | CPU s | "
              "score / diversity at target or last |", "|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        for r in m.get("runs", []):
            point = r["reached"] or r["last"] or {}
            lines.append(f"| {m['label']} | {r['seed']} | {r['stop']} | {r['epochs_run']} | "
                         f"{fmt(point.get('work_rows') if r['reached'] else None, 0)} | "
                         f"{fmt(point.get('cpu_seconds') if r['reached'] else None)} | "
                         f"{fmt(point.get('score'), 2)} / {fmt(point.get('diversity'), 2)} |")
    if result.get("memory"):
        lines += ["", f"## Memory per training step (batch {st['batch']})", "",
                  "| method | kept rollout->loss (bytes) | loss+backward peak (MB) | rollout+loss+backward peak (MB) |",
                  "|---|---|---|---|"]
        for name, mem in result["memory"].items():
            lines.append(f"| {methods[name]['label']} | {mem['kept_total_bytes']:,} | "
                         f"{mem['loss_backward_peak_bytes'] / 2**20:.1f} | {mem['epoch_peak_bytes'] / 2**20:.1f} |")
        sd3 = result["memory_sd3_scale"]
        lines += ["", f"At SD3.5-M scale (batch {sd3['batch']}, {sd3['steps']} steps, latents {sd3['latent_shape']}, "
                  f"bf16): ELBO keeps {sd3['elbo_final_x0_bytes'] / 2**20:.1f} MiB of final samples, the trajectory "
                  f"estimator {sd3['trajectory_bytes'] / 2**20:.1f} MiB of latents and log-probs."]
    lines += ["", f"Machine: {st['machine']}. Command: `{st['command']}`; {st['wall_minutes']:.1f} min wall; "
              f"bracketing rounds {st['extension_rounds']} (at most {st['max_extensions']}); batch {st['batch']}, "
              f"evaluation every {st['eval_every']} epochs on {st['eval_seeds']} seeds per prompt."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    cmap = plt.get_cmap("tab10")
    for i, (name, m) in enumerate(result["methods"].items()):
        for run in m.get("runs", []):
            if not run["curve"]:
                continue
            style = ":" if name.startswith("flowgrpo") else ("--" if "sde" in name else "-")
            for ax, key in zip(axes, ("work_rows", "cpu_seconds")):
                ax.plot([max(p[key], 1e-9) for p in run["curve"]], [p["score"] for p in run["curve"]], style,
                        color=cmap(i % 10), lw=1.0, alpha=0.8, label=m["label"] if run["seed"] == 0 else None)
    for ax, title in zip(axes, ("work: transformer rows (backward = 2 rows, CFG row = 2)",
                                "training CPU seconds (1 thread)")):
        ax.axhline(result["target"], color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(title + ", log scale")
        ax.set_ylabel("score (every seed at the chosen lr / beta)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Design-space study on {result['task']}: FlowGRPO dotted, SDE dashed, ODE solid")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
