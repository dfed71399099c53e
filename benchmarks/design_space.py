"""The design-space study (arXiv 2602.04663) on DigitEval: time to DigitEval 0.9 per method.

Every method is a TrainConfig override of the same trainer (docs/design.md section 1):

    flowgrpo        trajectory estimator, SDE rollouts, PPO-clip (grpo), std-normalised advantages,
                    KL on the SDE step means (the trainer's trajectory "girsanov")
    flowgrpo_cfg    the same with CFG 4.5 in rollouts and training (evaluated without CFG, like all)
    diffusionnft    nft objective on the adaptive ELBO residuals, optimality-probability advantages, ODE
    awm             PPO-clip on the simple-weighted ELBO ratio, ODE
    elbo_<obj>_<s>  adaptive ELBO with objective epg | pepg | par (and *_noratio), sampler ode | sde

Protocol (one run of this script, all methods side by side):

1. Learning-rate sweep: every method at each lr of its grid on seed 0.
2. Chosen lr: the stable lr with the fewest transformer rows to 0.9 (ties: the smaller lr).
   "Stable" = reached DigitEval >= 0.9 with diversity >= 0.7 at that evaluation and no
   skipped (non-finite) steps. A method with no stable lr takes the lr whose run saw the
   highest DigitEval at an evaluation with diversity >= 0.7 (ties: the larger lr).
3. Seeds: the chosen lr on seeds 1 and 2 (seed 0's sweep run is reused), so every method
   reports min / median / max over 3 seeds.

A run stops at the first evaluation with DigitEval >= 0.9 and diversity >= 0.7 (the trainer's
own stop_at ignores diversity, so it is off and the benchmark stops the run itself), when
diversity has collapsed below COLLAPSE, when DigitEval has fallen below DIVERGED, or at the
method's epoch budget. Runs are spread over worker
processes, each pinned to one intra-op thread, in an order that interleaves methods so that
load from other jobs on a shared machine hits all methods alike.

Costs recorded per evaluation: wall seconds (the trainer's "seconds", which include
evaluation), training-only wall seconds (sum of the seconds_<phase> fields), training-only
process CPU seconds (contention-robust on a shared machine), and transformer rows (the
trainer's device-independent count of rows through the transformer: forward rows, whether
or not they are back-propagated).

    python benchmarks/design_space.py            # full study (~30-40 min on 2 shared cores)
    python benchmarks/design_space.py --quick    # CI smoke: 3 methods, 1 lr, 1 seed, a few epochs

Writes benchmarks/results/design_space.{json,md,png} (--out to change the directory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

from design_space_report import (
    MIN_DIVERSITY,
    TARGET,
    _finite,
    choose_lr,
    first_at_target,
    spread,
    summarize_run,
    fmt,
    speedup_cell,
    write_markdown,
    write_plot,
)

COLLAPSE = 0.55
DIVERGED = 0.2  # DigitEval below this (base 0.34, chance 0.1) after 20 epochs: the run has diverged
LR_GRID = (1e-3, 3e-3, 1e-2)  # around the recipe's default 3e-3
LR_GRID_FLOWGRPO = LR_GRID  # 3e-2 diverged at once in a trial run (DigitEval 0.11, noise images)
SEEDS = (0, 1, 2)
BASELINE = "flowgrpo"

FLOWGRPO = dict(estimator="trajectory", sampler="sde", objective="grpo", advantage_mode="standard", kl="girsanov")
ELBO_OBJECTIVES = ("epg", "pepg", "par", "epg_noratio", "pepg_noratio", "par_noratio")


def method_table(epochs_elbo: int, epochs_flowgrpo: int, epochs_flowgrpo_cfg: int) -> Dict[str, dict]:
    """name -> {"overrides": TrainConfig overrides, "epochs": epoch budget, "label": for tables, "lrs": sweep}."""
    table = {
        "flowgrpo": dict(overrides=dict(FLOWGRPO, guidance_scale=1.0), epochs=epochs_flowgrpo,
                         label="FlowGRPO-style (no CFG)", lrs=LR_GRID_FLOWGRPO),
        "flowgrpo_cfg": dict(overrides=dict(FLOWGRPO, guidance_scale=4.5), epochs=epochs_flowgrpo_cfg,
                             label="FlowGRPO-style + CFG 4.5", lrs=LR_GRID_FLOWGRPO),
        "diffusionnft": dict(overrides=dict(objective="nft", advantage_mode="nft", weighting="adaptive", sampler="ode"),
                             epochs=epochs_elbo, label="DiffusionNFT-style"),
        "awm": dict(overrides=dict(objective="grpo", weighting="simple", sampler="ode"), epochs=epochs_elbo,
                    label="AWM-style (ratio on simple ELBO)"),
    }
    for sampler in ("ode", "sde"):
        for objective in ELBO_OBJECTIVES:
            table[f"elbo_{objective}_{sampler}"] = dict(
                overrides=dict(objective=objective, weighting="adaptive", sampler=sampler), epochs=epochs_elbo,
                label=f"ELBO {objective} + {sampler.upper()}" + (" (recipe)" if (objective, sampler) == ("pepg", "ode") else ""),
            )
    for method in table.values():
        method.setdefault("lrs", LR_GRID)
    return table


# ------------------------------------------------------------------------------------------------
# One run (in a worker process).
# ------------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from the log hook to end a run early (target reached or diversity collapsed)."""


def run_one(job: dict) -> dict:
    """Train one (method, lr, seed); return its per-epoch records with CPU-time columns added.

    With job["cache"] set, a finished run is saved there under a hash of everything that defines
    it, and an identical job later returns the saved run instead of training again.
    """
    key = {"method": job["method"], "config": {k: v for k, v in job["config"].items() if k != "output_dir"}}
    cache = None
    if job.get("cache"):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cache = Path(job["cache"]) / f"{job['method']}_lr{job['lr']:g}_s{job['seed']}_{digest}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
    run = _train(job)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(run))
    return run


def resolve_config(job: dict) -> dict:
    """The run's complete TrainConfig as a dict, resolved once in the parent process.

    Every value is written out (not left to the defaults), so all runs of one invocation share
    the same defaults even if the library changes while it runs, and the cache key covers them.
    stop_at is None: the benchmark stops runs itself (diversity-aware).
    """
    from elbo_kernels.train import TrainConfig

    cfg = TrainConfig(
        output_dir=job["output_dir"], seed=job["seed"], lr=job["lr"], epochs=job["epochs"], eval_every=job["eval_every"],
        eval_seeds=job["eval_seeds"], checkpoint_every=0, keep_checkpoints=1, plots=False, tensorboard=False,
        progress=False, **dict(job.get("scale", {}), stop_at=None), **job["overrides"],
    )
    return cfg.validate().to_dict()


def _train(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)  # one core per worker: process CPU time then measures this run's work only
    from elbo_kernels.train import TrainConfig, Trainer
    from elbo_kernels.train.trainer import NonFiniteError

    class BenchTrainer(Trainer):
        """Adds process-CPU bookkeeping and the diversity-aware stop; the training loop is untouched."""

        def evaluate(self) -> dict:
            start = time.process_time()
            result = super().evaluate()
            self.eval_cpu += time.process_time() - start
            return result

        def fit(self) -> dict:
            self.eval_cpu = 0.0
            self.cpu_start = time.process_time()
            log = self.output.log

            def log_and_check(record: dict, progress) -> None:
                record["cpu_seconds_train"] = time.process_time() - self.cpu_start - self.eval_cpu
                log(record, progress)
                if "digiteval" in record:
                    if record["digiteval"] >= TARGET and record["diversity"] >= MIN_DIVERSITY:
                        raise _Stop("target")
                    if record["diversity"] < COLLAPSE:
                        raise _Stop("collapsed")
                    if record["epoch"] >= 20 and record["digiteval"] < DIVERGED:
                        raise _Stop("diverged")

            self.output.log = log_and_check
            return super().fit()

    cfg = TrainConfig.from_dict(dict(job["config"], output_dir=job["output_dir"]))
    start = time.perf_counter()
    trainer = BenchTrainer(cfg)
    before = None
    stop = "budget"
    try:
        trainer.fit()
    except _Stop as reason:
        stop = str(reason)
    except NonFiniteError:
        stop = "non-finite"
    except (ValueError, RuntimeError) as error:  # e.g. the ops' finite checks once a run has diverged
        stop = f"error: {type(error).__name__}: {str(error)[:200]}"
    before = trainer.output.summary_before
    return {
        "method": job["method"], "lr": job["lr"], "seed": job["seed"], "stop": stop, "config": job["config"],
        "before": {k: before.get(k) for k in ("digiteval", "diversity")},
        "records": trainer.history, "wall_seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------------------------------
# Memory kept between rollout and loss, and one training step's allocation peak.
# ------------------------------------------------------------------------------------------------
def memory_per_method(methods: Dict[str, dict], scale: dict) -> Dict[str, dict]:
    """Bytes each estimator keeps from rollout to loss, and the profiler's peak for one epoch's step."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from memory import peak_bytes

    from elbo_kernels.train import TrainConfig, Trainer
    from elbo_kernels.train.policy_step import POLICY_STEPS

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, method in methods.items():
            cfg = TrainConfig(output_dir=f"{tmp}/{name}", epochs=1, plots=False, tensorboard=False, progress=False,
                              eval_every=0, checkpoint_every=0, **scale, **method["overrides"])
            trainer = Trainer(cfg)
            # The pieces of one epoch of Trainer.fit (epoch 0, one process).
            prompts = trainer.sample_prompts(trainer.generator(0, "prompts"))
            samples = trainer.local_samples()
            rollout = trainer.rollout(prompts, 0, samples)
            kept = {"final_x0": rollout.final.nbytes}
            if rollout.trajectory is not None:
                kept["trajectory_latents"] = rollout.trajectory.latents.nbytes
                kept["trajectory_log_probs"] = rollout.trajectory.log_probs.nbytes
            advantages = trainer.advantages(prompts, trainer.rewards(rollout))
            policy_step = POLICY_STEPS[cfg.estimator]

            def draws():
                return [trainer.generator(0, "draws", i) for i in samples]

            def step():
                policy_step(trainer, rollout, advantages, draws())
                trainer.optimizer.zero_grad(set_to_none=True)

            def whole_epoch():
                policy_step(trainer, trainer.rollout(prompts, 0, samples), advantages, draws())
                trainer.optimizer.zero_grad(set_to_none=True)

            step()  # warm-up (lazy allocations, caches)
            out[name] = {
                "kept_bytes": kept,
                "kept_total_bytes": sum(kept.values()),
                "loss_backward_peak_bytes": peak_bytes(step, "cpu"),
                "epoch_peak_bytes": peak_bytes(whole_epoch, "cpu"),
            }
            torch.manual_seed(0)
    return out


def sd3_kept_bytes(batch: int = 24, steps: int = 10, shape=(16, 64, 64), bytes_per=2) -> dict:
    """The same bookkeeping at SD3.5-M's 512px latents (bf16), for scale."""
    elements = math.prod(shape)
    return {
        "batch": batch, "steps": steps, "latent_shape": list(shape), "dtype_bytes": bytes_per,
        "elbo_final_x0_bytes": batch * elements * bytes_per,
        "trajectory_bytes": batch * (steps + 1) * elements * bytes_per + batch * steps * 4,
    }


# ------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 3 methods, 1 lr, 1 seed, 2 epochs, tiny batch")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default="", help="comma-separated subset of method names")
    parser.add_argument("--epochs-elbo", type=int, default=60)
    parser.add_argument("--epochs-flowgrpo", type=int, default=300)
    parser.add_argument("--epochs-flowgrpo-cfg", type=int, default=200, help="(twice the cost per epoch)")
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--eval-seeds", type=int, default=10)
    parser.add_argument("--lrs", default="", help="comma-separated learning rates (default: the LR_GRID)")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="number of seeds (0, 1, ...)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--cache", default="", help="directory of finished runs to reuse (and to save runs in)")
    parser.add_argument("--merge", action="store_true",
                        help="rerun --methods (at --lrs) and merge into the existing design_space.json in --out")
    args = parser.parse_args(argv)

    all_methods = method_table(args.epochs_elbo, args.epochs_flowgrpo, args.epochs_flowgrpo_cfg)
    methods = dict(all_methods)
    seeds, scale = tuple(range(args.seeds)), {}
    if args.quick:
        methods = {k: methods[k] for k in ("flowgrpo", "diffusionnft", "elbo_pepg_ode")}
        for m in methods.values():
            m["epochs"] = 2
        for m in methods.values():
            m["lrs"] = (3e-3,)
        seeds = (0,)
        scale = dict(prompts_per_epoch=4, group_size=4, draws_per_sample=2)
        args.eval_every, args.eval_seeds = 1, 2
    if args.methods:
        wanted = args.methods.split(",")
        unknown = sorted(set(wanted) - set(methods))
        if unknown:
            parser.error(f"unknown method(s) {unknown}; known: {', '.join(methods)}")
        methods = {k: methods[k] for k in wanted}
    if args.lrs:
        for m in methods.values():
            m["lrs"] = tuple(float(x) for x in args.lrs.split(","))

    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from tqdm.auto import tqdm

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="design_space_")

    def job(name, lr, seed):
        spec = dict(method=name, lr=lr, seed=seed, overrides=methods[name]["overrides"], epochs=methods[name]["epochs"],
                    eval_every=args.eval_every, eval_seeds=args.eval_seeds, scale=scale,
                    output_dir=f"{tmp.name}/{name}_lr{lr:g}_s{seed}", cache=args.cache)
        spec["config"] = resolve_config(spec)
        return spec

    # (method, lr, seed) -> summarize_run(...). --merge starts from the previous result's summaries,
    # less those of the (method, lr) pairs run again now.
    summaries: Dict[tuple, dict] = {}
    previous = json.loads((out_dir / "design_space.json").read_text()) if args.merge else None
    if previous:
        rerun = {(n, lr) for n, m in methods.items() for lr in m["lrs"]}
        for name, m in previous["methods"].items():
            if name not in methods:
                methods[name] = dict(all_methods[name], epochs=m["epoch_budget"], lrs=tuple(map(float, m["sweep"])))
            else:
                methods[name]["lrs"] = tuple(sorted(set(methods[name]["lrs"]) | set(map(float, m["sweep"]))))
            for lr, summary in m["sweep"].items():
                if (name, float(lr)) not in rerun:
                    summaries[(name, float(lr), seeds[0])] = summary
            for summary in m["runs"]:
                if (name, summary["lr"]) not in rerun:
                    summaries[(name, summary["lr"], summary["seed"])] = summary
        methods = {n: methods[n] for n in all_methods if n in methods}  # the table's order

    def collect(jobs, pool, bar):
        for run in pool.map(run_one, jobs):
            summaries[(run["method"], run["lr"], run["seed"])] = summarize_run(run)
            bar.update(1)

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        # Phase 1: the sweep on seed 0, interleaved (lr outer, method inner; slow methods first in each round).
        order = sorted(methods, key=lambda n: -methods[n]["epochs"])
        rounds = max(len(methods[n]["lrs"]) for n in order)
        jobs = [job(n, methods[n]["lrs"][i], seeds[0]) for i in range(rounds) for n in order
                if i < len(methods[n]["lrs"]) and (n, methods[n]["lrs"][i], seeds[0]) not in summaries]
        bar = tqdm(total=len(jobs) + len(methods) * (len(seeds) - 1), desc="runs", unit="run", dynamic_ncols=True)
        collect(jobs, pool, bar)
        sweeps = {n: {lr: summaries[(n, lr, seeds[0])] for lr in methods[n]["lrs"]} for n in methods}
        chosen = {n: choose_lr(sweeps[n]) for n in methods}
        # Phase 2: the chosen lr on the other seeds.
        jobs = [job(n, chosen[n], s) for s in seeds[1:] for n in order if (n, chosen[n], s) not in summaries]
        collect(jobs, pool, bar)
        bar.close()
    tmp.cleanup()

    result = {"methods": {}, "speedup_baseline": "flowgrpo (no CFG)", "speedup_vs_flowgrpo": {},
              "speedup_rows": {}, "speedup_wall": {}, "speedup_lower_bound": {},
              "speedup_any_diversity": {}, "speedup_rows_any_diversity": {}}
    for name, m in methods.items():
        per_seed = [summaries[(name, chosen[name], s)] for s in seeds]

        def at(key, min_diversity=MIN_DIVERSITY):
            points = [first_at_target(r, min_diversity) for r in per_seed]
            return spread([p[key] if p else None for p in points])

        result["methods"][name] = {
            "label": m["label"], "overrides": m["overrides"], "epoch_budget": m["epochs"],
            "sweep": {str(lr): s for lr, s in sweeps[name].items()},
            "chosen_lr": chosen[name],
            "config": per_seed[0].get("config"),  # the complete TrainConfig of seed 0 (other seeds differ in seed)
            "seeds": {"cpu_seconds": at("cpu_seconds"), "train_seconds": at("train_seconds"),
                      "seconds_with_eval": at("seconds"), "transformer_rows": at("transformer_rows"),
                      "epochs": at("epoch"), "diversity": at("diversity"), "digiteval": at("digiteval")},
            # The same, counting the first DigitEval >= 0.9 whatever the diversity (reward hacking allowed).
            "seeds_any_diversity": {"cpu_seconds": at("cpu_seconds", 0.0), "transformer_rows": at("transformer_rows", 0.0),
                                    "epochs": at("epoch", 0.0), "diversity": at("diversity", 0.0)},
            "runs": per_seed,
        }
    base = result["methods"].get(BASELINE)
    for name, m in result["methods"].items():
        for key, column in (("cpu_seconds", "speedup_vs_flowgrpo"), ("transformer_rows", "speedup_rows"),
                            ("train_seconds", "speedup_wall")):
            table = result[column]
            b = base["seeds"][key]["median"] if base else None
            v = m["seeds"][key]["median"]
            table[name] = None if b is None or v is None or math.isinf(v) or math.isinf(b) else b / v
        for key, column in (("cpu_seconds", "speedup_any_diversity"), ("transformer_rows", "speedup_rows_any_diversity")):
            b = base["seeds_any_diversity"][key]["median"] if base else None
            v = m["seeds_any_diversity"][key]["median"]
            result[column][name] = None if b is None or math.isinf(b) or math.isinf(v) else b / v
        if base and math.isinf(base["seeds"]["cpu_seconds"]["median"]):
            # The baseline never reached the target within its budget: its CPU seconds at the end of the
            # budget (median over seeds) / the method's time to the target is a lower bound on the speedup.
            spent = statistics.median(r["last"]["cpu_seconds"] for r in base["runs"] if r["last"])
            v = m["seeds"]["cpu_seconds"]["median"]
            result["speedup_lower_bound"][name] = None if math.isinf(v) else spent / v
    # The headline mapping: measured where the baseline's median reached the target, else the lower bound.
    result["speedup_vs_flowgrpo_is_lower_bound"] = bool(result["speedup_lower_bound"])
    for name, bound in result["speedup_lower_bound"].items():
        if result["speedup_vs_flowgrpo"].get(name) is None:
            result["speedup_vs_flowgrpo"][name] = bound
    result["speedup_definition"] = (
        "speedup_vs_flowgrpo: median over seeds of FlowGRPO-style (no CFG) training CPU seconds to DigitEval 0.9 "
        "with diversity >= 0.7, divided by the method's. When FlowGRPO-style's median never reached that target "
        "(speedup_vs_flowgrpo_is_lower_bound), it is the lower bound speedup_lower_bound: FlowGRPO-style's median "
        "CPU seconds spent over its whole runs / the method's. speedup_rows / speedup_wall: transformer rows / "
        "training wall seconds (null when the baseline median is not reached). speedup_any_diversity / "
        "speedup_rows_any_diversity: the same ratios counting the first DigitEval >= 0.9 whatever the diversity.")
    if previous and "memory" in previous and args.no_memory:
        for key in ("memory", "memory_note", "memory_sd3_scale"):
            result[key] = previous[key]
    if not args.no_memory:
        mem_methods = {k: methods[k] for k in methods if k in ("flowgrpo", "flowgrpo_cfg", "diffusionnft", "awm",
                                                                "elbo_pepg_ode", "elbo_pepg_sde")}
        # The ELBO step batches all B*K draws in one forward/backward; micro_batch = B bounds its
        # activations to the trajectory step's (which runs K columns of B rows one after another).
        if "elbo_pepg_ode" in mem_methods:
            batch_rows = scale.get("prompts_per_epoch", 10) * scale.get("group_size", 8)
            mem_methods["elbo_pepg_ode_micro_batch"] = dict(
                overrides=dict(mem_methods["elbo_pepg_ode"]["overrides"], micro_batch=batch_rows))
        result["memory"] = memory_per_method(mem_methods, scale)
        result["memory_note"] = (
            "kept_bytes: tensors the estimator needs from the rollout at loss time (ELBO: final x0 [B, *S]; "
            "trajectory: latents [B, T+1, *S] + log-probs [B, T] + final). *_peak_bytes: the torch profiler's "
            "allocation peak (benchmarks/memory.py) of one epoch's loss+backward, and of rollout+loss+backward, "
            "at the benchmark's batch; activations of this tiny model dominate those peaks.")
        result["memory_sd3_scale"] = sd3_kept_bytes()
    batch = (scale.get("prompts_per_epoch", 10) * scale.get("group_size", 8))
    result["settings"] = {
        "target": TARGET, "min_diversity": MIN_DIVERSITY, "collapse_stop": COLLAPSE,
        "lr_grids": {n: list(m["lrs"]) for n, m in methods.items()},
        "seeds": list(seeds), "eval_every": args.eval_every, "eval_seeds": args.eval_seeds, "batch": batch,
        "workers": args.workers, "threads_per_worker": 1, "quick": args.quick,
        "command": "python benchmarks/design_space.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])),
        "previous_commands": (previous["settings"].get("previous_commands", []) + [previous["settings"]["command"]])
        if previous else [],
        "machine": f"{os.cpu_count()} CPU cores, torch CPU, shared with other jobs (load average at end "
                   f"{os.getloadavg()[0]:.1f})",
        "wall_minutes": (time.perf_counter() - started) / 60
        + (previous["settings"]["wall_minutes"] if previous else 0.0),
    }
    (out_dir / "design_space.json").write_text(json.dumps(_finite(result), indent=1))
    write_markdown(result, out_dir / "design_space.md")
    write_plot(result, out_dir / "design_space.png")

    print(f"\n{'method':34s} {'lr':>7s} {'reached':>7s} {'CPU s to 0.9':>13s} {'rows to 0.9':>12s} "
          f"{'speedup(CPU)':>12s} {'speedup(rows)':>13s} {'any-div':>8s} {'div@0.9':>7s} {'kept bytes':>11s} {'step peak MB':>12s}")
    for name, m in result["methods"].items():
        s = m["seeds"]
        mem = result.get("memory", {}).get(name, {})
        print(f"{m['label'][:34]:34s} {m['chosen_lr']:7.0e} {s['cpu_seconds']['reached']:>7s} "
              f"{fmt(s['cpu_seconds']['median']):>13s} {fmt(s['transformer_rows']['median'], 0):>12s} "
              f"{speedup_cell(result, name):>12s} {fmt(result['speedup_rows'][name], 2, 'x'):>13s} "
              f"{fmt(result['speedup_any_diversity'][name], 2, 'x'):>8s} {fmt(s['diversity']['median'], 2):>7s} {mem.get('kept_total_bytes', '-'):>11} "
              f"{fmt(mem['epoch_peak_bytes'] / 2**20 if mem else None):>12s}")
    print(f"wrote {out_dir / 'design_space.json'}, .md, .png ({result['settings']['wall_minutes']:.1f} min)")
    return result


if __name__ == "__main__":
    main()
