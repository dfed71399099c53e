"""Reading the design-space benchmark's runs, and its tables and plots (benchmarks/design_space.py runs them)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional

TARGET = 0.9
MIN_DIVERSITY = 0.7

# ------------------------------------------------------------------------------------------------
# Reading a run.
# ------------------------------------------------------------------------------------------------
def training_seconds(record: dict) -> float:
    return sum(v for k, v in record.items() if k.startswith("seconds_"))


def summarize_run(run: dict) -> dict:
    """Costs at the first qualifying evaluation (DigitEval >= 0.9 with diversity >= 0.7)."""
    wall_train = 0.0
    curve = []
    reached = None
    best = None
    for record in run["records"]:
        wall_train += training_seconds(record)
        if "digiteval" not in record:
            continue
        point = {
            "epoch": record["epoch"], "digiteval": record["digiteval"], "diversity": record["diversity"],
            "seconds": record["seconds"], "train_seconds": wall_train, "cpu_seconds": record["cpu_seconds_train"],
            "transformer_rows": record["transformer_rows"],
        }
        curve.append(point)
        if best is None or point["digiteval"] > best["digiteval"]:
            best = point
        if reached is None and point["digiteval"] >= TARGET and point["diversity"] >= MIN_DIVERSITY:
            reached = point
    skipped = sum(1 for r in run["records"] if r.get("skipped"))
    return {
        "lr": run["lr"], "seed": run["seed"], "stop": run["stop"], "epochs_run": len(run["records"]),
        "config": run.get("config"),
        "skipped_steps": skipped, "stable": reached is not None and skipped == 0,
        "reached": reached, "best": best, "last": curve[-1] if curve else None, "before": run["before"],
        "curve": curve,
    }


def first_at_target(summary: dict, min_diversity: float = MIN_DIVERSITY) -> Optional[dict]:
    """The first evaluation with DigitEval >= 0.9 and diversity >= min_diversity (0: any diversity)."""
    return next((p for p in summary["curve"] if p["digiteval"] >= TARGET and p["diversity"] >= min_diversity), None)


def spread(values: List[Optional[float]]) -> dict:
    """min / median / max over seeds; a run that never reached the target counts as +inf."""
    finite = [v for v in values if v is not None]
    as_inf = sorted(math.inf if v is None else v for v in values)
    return {
        "min": as_inf[0] if as_inf else None, "median": statistics.median(as_inf) if as_inf else None,
        "max": as_inf[-1] if as_inf else None, "reached": f"{len(finite)}/{len(values)}", "values": values,
    }


def _finite(value):
    """JSON has no infinity: a target never reached is written as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isinf(value) else value


def choose_lr(sweep: Dict[float, dict]) -> float:
    """Fewest rows to the target among stable lrs; else the highest DigitEval seen with diversity >= 0.7."""
    stable = [(s["reached"]["transformer_rows"], lr) for lr, s in sweep.items() if s["stable"]]
    if stable:
        return min(stable)[1]
    healthy = [(max([p["digiteval"] for p in s["curve"] if p["diversity"] >= MIN_DIVERSITY] or [0.0]), -lr)
               for lr, s in sweep.items()]
    return -max(healthy)[1]


# ------------------------------------------------------------------------------------------------
# Outputs.
# ------------------------------------------------------------------------------------------------
def fmt(value, digits=1, suffix=""):
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "not reached"
    return f"{value:.{digits}f}{suffix}"


def speedup_cell(result: dict, name: str) -> str:
    value = result["speedup_vs_flowgrpo"].get(name)
    if value is not None and result.get("speedup_vs_flowgrpo_is_lower_bound"):
        return f">= {value:.2f}x"
    return fmt(value, 2, "x")


def write_markdown(result: dict, path: Path) -> None:
    methods = result["methods"]
    lines = [
        "# Design-space study on DigitEval",
        "",
        f"Target DigitEval >= {TARGET} with diversity >= {MIN_DIVERSITY} at the same evaluation. "
        f"Median [min, max] over seeds {result['settings']['seeds']}; times are training only "
        "(evaluation excluded). CPU s = process CPU seconds of the run's single-threaded worker "
        "(robust to other jobs on the machine); wall s = wall-clock seconds of the training phases. "
        f"Speedup = FlowGRPO-style ({result['speedup_baseline']}) median / method median.",
        "",
        "| method | lr (chosen) | reached | CPU s to 0.9 | wall s to 0.9 | transformer rows to 0.9 | "
        "diversity at 0.9 | speedup (CPU) | speedup (rows) | speedup (wall) | final DigitEval / diversity | "
        "reached ignoring diversity | CPU s to 0.9 ignoring diversity | speedup (CPU) ignoring diversity | "
        "speedup (rows) ignoring diversity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        s = m["seeds"]

        def cell(key, digits=1):
            sp = s[key]
            return f"{fmt(sp['median'], digits)} [{fmt(sp['min'], digits)}, {fmt(sp['max'], digits)}]"

        finals = "; ".join(f"{fmt(r['last']['digiteval'], 2)} / {fmt(r['last']['diversity'], 2)}"
                           for r in m["runs"] if r["last"])
        lines.append(
            f"| {m['label']} | {m['chosen_lr']:g} | {s['cpu_seconds']['reached']} | {cell('cpu_seconds')} | "
            f"{cell('train_seconds')} | {cell('transformer_rows', 0)} | {cell('diversity', 2)} | "
            f"{speedup_cell(result, name)} | {fmt(result['speedup_rows'].get(name), 2, 'x')} | "
            f"{fmt(result['speedup_wall'].get(name), 2, 'x')} | {finals} | "
            f"{m['seeds_any_diversity']['cpu_seconds']['reached']} | "
            f"{fmt(m['seeds_any_diversity']['cpu_seconds']['median'])} [{fmt(m['seeds_any_diversity']['cpu_seconds']['min'])}, "
            f"{fmt(m['seeds_any_diversity']['cpu_seconds']['max'])}] | "
            f"{fmt(result['speedup_any_diversity'].get(name), 2, 'x')} | "
            f"{fmt(result['speedup_rows_any_diversity'].get(name), 2, 'x')} |"
        )
    lines += ["", "## Learning-rate sweep (seed 0)", "",
              "| method | lr | stop | epochs | rows to 0.9 | CPU s to 0.9 | best DigitEval (diversity) | last DigitEval (diversity) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        for lr, s in m["sweep"].items():
            reached = s["reached"] or {}
            lines.append(
                f"| {m['label']} | {lr} | {s['stop']} | {s['epochs_run']} | {fmt(reached.get('transformer_rows'), 0)} | "
                f"{fmt(reached.get('cpu_seconds'))} | {fmt(s['best']['digiteval'], 2)} ({fmt(s['best']['diversity'], 2)}) | "
                f"{fmt(s['last']['digiteval'], 2)} ({fmt(s['last']['diversity'], 2)}) |"
            )
    if result.get("memory"):
        lines += ["", "## Memory per training step (DigitEval scale, batch "
                  f"{result['settings']['batch']})", "",
                  "| method | kept rollout->loss (bytes) | loss+backward peak (MB) | rollout+loss+backward peak (MB) |",
                  "|---|---|---|---|"]
        for name, mem in result["memory"].items():
            lines.append(f"| {methods[name]['label'] if name in methods else name} | {mem['kept_total_bytes']:,} | "
                         f"{mem['loss_backward_peak_bytes'] / 2**20:.1f} | {mem['epoch_peak_bytes'] / 2**20:.1f} |")
        sd3 = result["memory_sd3_scale"]
        lines += ["", f"At SD3.5-M scale (batch {sd3['batch']}, {sd3['steps']} steps, latents {sd3['latent_shape']}, "
                  f"bf16): ELBO keeps {sd3['elbo_final_x0_bytes'] / 2**20:.1f} MiB of final samples, the trajectory "
                  f"estimator {sd3['trajectory_bytes'] / 2**20:.1f} MiB of latents and log-probs."]
    commands = result["settings"]["previous_commands"] + [result["settings"]["command"]]
    lines += ["", f"Machine: {result['settings']['machine']}. Runs: {'; then '.join(f'`{c}`' for c in commands)}; "
              f"{result['settings']['wall_minutes']:.1f} min wall in all. '>= Nx': FlowGRPO-style did not reach the "
              "target within its epoch budget; its CPU seconds over the whole budget / the method's time is a lower bound."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 6))
    names = list(result["methods"])
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        m = result["methods"][name]
        run = next((r for r in m["runs"] if r["seed"] == 0), m["runs"][0] if m["runs"] else None)
        if run is None or not run["curve"]:
            continue
        style = "-" if ("ode" in name or name in ("diffusionnft", "awm")) else "--"
        if name.startswith("flowgrpo"):
            style = ":"
        recipe = name == "elbo_pepg_ode"
        for ax, key in zip(axes, ("cpu_seconds", "train_seconds", "transformer_rows")):
            xs = [p[key] for p in run["curve"]]
            ys = [p["digiteval"] for p in run["curve"]]
            ax.plot(xs, ys, style, color="k" if recipe else cmap(i % 20), label=m["label"], lw=2.5 if recipe else 1.2,
                    zorder=3 if recipe else 2)
    for ax, title in zip(axes, ("training CPU seconds (1 thread)", "training wall seconds (shared machine)",
                                "transformer rows (forward)")):
        ax.axhline(TARGET, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(title + ", log scale")
        ax.set_ylabel("DigitEval (seed 0, chosen lr)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Design-space study on DigitEval: ODE solid, SDE dashed, FlowGRPO-style dotted")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
