"""The design-space study (arXiv 2602.04663) on an embedded task: work to the target per method.

    python benchmarks/design_space.py                         # full study on DigitEval
    python benchmarks/design_space.py --task digit_geneval    # the same study on DigitGenEval (target 0.6)
    python benchmarks/design_space.py --quick                 # CI smoke: 3 methods, 1 grid point, 2 seeds

Methods and where their values come from: design_space_methods.py (docs/design_space.md lists every
remaining deviation). Protocol, one invocation, all methods side by side:

0. Base check: the untrained model is evaluated as each method deploys it (eval steps, eval CFG). A
   method whose base model already meets the target is reported as such, not swept (0 work).
1. Sweep on seed 0: every (lr, beta) of the method's grid, which holds its published values.
2. Bracketing: the winner (fewest work rows to the target among runs that reached it with no skipped
   step; else the highest score seen at diversity >= 0.7) must have a run on both sides along each
   axis at its own value of the other axis; missing neighbours are run and the winner re-chosen, up
   to --max_extensions rounds. A winner still on an edge is flagged "not bracketed" in the report.
3. Seeds: the winner on seeds 1 .. n-1 (seed 0's sweep run reused): medians with bootstrap 95%
   intervals; seeds that collapsed, diverged or ran out of budget are counted separately.

A run stops at the first evaluation with score >= target and diversity >= 0.7 ("target"), when
diversity falls below COLLAPSE ("collapsed"), when the score falls below DIVERGED x the base score
after 20 epochs ("diverged"), or at its epoch budget ("budget").

Work: transformer rows to the target, a backward pass counted as 2 forward rows (work = forward rows +
2 x rows run with gradient); a CFG row is two rows (the conditional and the unconditional forward).
Also process CPU seconds of training (one intra-op thread per worker) and wall seconds.

Writes benchmarks/results/design_space.{json,md,png}, or design_space_<task>.{json,md,png} with --task
(--out to change the directory).

SIGTERM, SIGINT or SIGUSR1 stop the study: the pool's workers are terminated (each stops its run at
its next stop point, elbo_kernels/train/preemption.py) and reaped, then the study exits with 128 +
the signal's number; a worker whose parent died without that (SIGKILL) is sent SIGTERM by the kernel
(PR_SET_DEATHSIG), so no worker outlives the study.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elbo_kernels._argparse import Parser  # noqa: E402

from design_space_methods import method_table, missing_brackets  # noqa: E402
from design_space_report import (  # noqa: E402
    MIN_DIVERSITY,
    TARGET,
    choose_point,
    finite_json,
    summarize_method,
    summarize_run,
    write_markdown,
    write_plot,
)

# The target per task. DigitEval: 0.9, where the base model is at 0.31 without CFG. DigitGenEval: 0.6, the
# base model's own score with CFG 4.5 (0.63 at 10 steps): every method there stays within a few points of it
# at this scale, so the study asks what it costs each method to match CFG-deployed quality without CFG
# (docs/design_space.md, "DigitGenEval").
TASK_TARGETS = {"digiteval": TARGET, "digit_geneval": 0.6}
COLLAPSE = 0.55
DIVERGED = 0.6  # x the base model's score, after 20 epochs
SEEDS = 5


# ------------------------------------------------------------------------------------------------
# One run (in a worker process).
# ------------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from the log hook to end a run early."""


def cache_path(job: dict):
    """Where a finished run of this job is saved (None without --cache): named by a hash of its content."""
    if not job.get("cache"):
        return None
    key = {"method": job["method"], "config": {k: v for k, v in job["config"].items() if k != "output_dir"},
           "target": job["target"]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(job["cache"]) / f"{job['method']}_lr{job['lr']:g}_b{job['beta']:g}_s{job['seed']}_{digest}.json"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
WORKER_GRACE_SECONDS = 30  # a terminated worker's run stops at its next stop point; then SIGKILL


def die_with_parent() -> None:
    """Pool initializer (Linux): the kernel sends this worker SIGTERM when the study's process dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_pool_on_signals(pool) -> dict:
    """On a stop signal: cancel the queued runs, terminate and reap every worker, exit 128 + signum.
    Returns the previous handlers (to put back once the pool is closed)."""
    def stop(signum, frame):
        workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        deadline = time.monotonic() + WORKER_GRACE_SECONDS
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.kill()
                worker.join()
        print(f"design_space: stopped by {signal.Signals(signum).name}; {len(workers)} worker(s) terminated",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)  # the pool's manager thread would wait on the dead workers' queues

    return {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}


def run_one(job: dict) -> dict:
    """Train one (method, lr, beta, seed); with job["cache"], reuse / save the finished run by content."""
    return _cached(cache_path(job), _train, job)


def _cached(cache, compute, job: dict) -> dict:
    """compute(job), read from / written to the JSON file ``cache`` when it is not None."""
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    result = compute(job)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    return result


def resolve_config(job: dict) -> dict:
    """The run's complete TrainConfig as a dict (every value written out, so the cache key covers them)."""
    from elbo_kernels.train import TrainConfig

    cfg = TrainConfig(
        output_dir=job["output_dir"], seed=job["seed"], lr=job["lr"], beta=job["beta"], epochs=job["epochs"],
        eval_every=job["eval_every"], eval_seeds=job["eval_seeds"], checkpoint_every=0, keep_checkpoints=1,
        plots=False, tensorboard=False, progress=False, **dict(job.get("scale", {}), stop_at=None),
        **job["overrides"],
    )
    if job["beta"] == 0:
        cfg.kl = None
    return cfg.validate().to_dict()


def _bench_trainer_class():
    from elbo_kernels.train import Trainer

    class BenchTrainer(Trainer):
        """Counts rows run with gradient and process CPU time; stops runs; the training loop is untouched."""

        def velocity(self, x, t, cond):
            import torch

            if torch.is_grad_enabled() and self._phase == "update":
                self.backward_rows += x.shape[0]
            return super().velocity(x, t, cond)

        def evaluate(self) -> dict:
            start = time.process_time()
            result = super().evaluate()
            self.eval_cpu += time.process_time() - start
            return result

    return BenchTrainer


def _train(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)  # one core per worker: process CPU time then measures this run's work only
    from elbo_kernels.train import TrainConfig
    from elbo_kernels.train.errors import NonFiniteError

    cfg = TrainConfig.from_dict(dict(job["config"], output_dir=job["output_dir"]))
    start = time.perf_counter()
    trainer = _bench_trainer_class()(cfg)
    trainer.backward_rows, trainer.eval_cpu = 0, 0.0
    metric = trainer.task.metric
    target = job["target"]
    cpu_start = time.process_time()
    log = trainer.output.log

    def log_and_check(record: dict, progress) -> None:
        record["cpu_seconds_train"] = time.process_time() - cpu_start - trainer.eval_cpu
        record["backward_rows"] = trainer.backward_rows
        record["work_rows"] = record["transformer_rows"] + 2 * trainer.backward_rows
        log(record, progress)
        if metric in record:
            base = trainer.output.summary_before.get(metric) or 0.0
            if record[metric] >= target and record["diversity"] >= MIN_DIVERSITY:
                raise _Stop("target")
            if record["diversity"] < COLLAPSE:
                raise _Stop("collapsed")
            if record["epoch"] >= 20 and record[metric] < DIVERGED * base:
                raise _Stop("diverged")

    trainer.output.log = log_and_check
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
        "method": job["method"], "lr": job["lr"], "beta": job["beta"], "seed": job["seed"], "stop": stop,
        "config": job["config"], "metric": metric, "target": target,
        "before": {"score": before.get(metric), "diversity": before.get("diversity")},
        "records": [{**r, "score": r[metric]} if metric in r else r for r in trainer.history],
        "wall_seconds": time.perf_counter() - start,
    }


def base_check(job: dict) -> dict:
    """The untrained model evaluated as the method deploys it (its eval steps and eval CFG); cached like runs."""
    return _cached(cache_path(dict(job, method=f"base_{job['method']}")), _base_check, job)


def _base_check(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from elbo_kernels.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig.from_dict(dict(job["config"], output_dir=job["output_dir"])))
    result = trainer.evaluate()
    return {"method": job["method"], "score": result.get("digiteval", result.get(trainer.task.metric)),
            "diversity": result.get("diversity")}


def schedule(pool, methods, swept, followers, seeds, job, runs, bar, args):
    """Each method on its own through grid -> bracketing rounds -> seeds, as soon as its previous stage is
    done; a free worker takes the ready job of the cheapest method (smallest epoch budget) first, so the
    fast methods finish whole while the slow ones still run (and --cached_only then finds complete ones).
    Returns (points, winners, missing, bracketing rounds per method)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    ready, running = [], {}
    outstanding = {n: 0 for n in [*swept, *followers]}
    stage = {n: "grid" for n in swept}
    rounds = {n: 0 for n in swept}
    points, winners, missing = {}, {}, {}

    def add(jobs):
        if args.cached_only:
            jobs = [j for j in jobs if cache_path(j) is not None and cache_path(j).is_file()]
        for j in jobs:
            ready.append(j)
            outstanding[j["method"]] += 1
        bar.total += len(jobs)
        bar.refresh()

    def advance(n):
        """Method n's stage is complete: next stage, or done."""
        points[n] = {(lr, beta): s for (m, lr, beta, seed), s in runs.items() if m == n and seed == seeds[0]}
        if n in followers:
            return
        if not points[n]:
            return  # --cached_only with nothing of it in the cache
        winners[n] = choose_point(points[n])
        missing[n] = missing_brackets(set(points[n]), winners[n])
        if stage[n] != "seeds" and missing[n] and rounds[n] < args.max_extensions:
            rounds[n] += 1
            stage[n] = "bracket"
            add([job(n, lr, beta, seeds[0]) for lr, beta in missing[n]])
            if outstanding[n]:
                return
            return advance(n)
        if stage[n] == "seeds":
            return
        stage[n] = "seeds"
        add([job(n, *winners[n], s) for s in seeds[1:]])
        for f in followers:
            if methods[f]["follows"] == n:
                winners[f], missing[f] = winners[n], []
                add([job(f, *winners[n], s) for s in seeds])
                if not outstanding[f]:
                    advance(f)
        if not outstanding[n]:
            advance(n)

    for n in swept:
        add([job(n, lr, beta, seeds[0]) for lr in methods[n]["lrs"] for beta in methods[n]["betas"]])
        if not outstanding[n]:
            advance(n)
    # Among equal budgets: the recipe and its SDE twin first (the headline), then the other baselines.
    first = ("recipe", "recipe_sde", "diffusionnft", "awm")
    order = {n: (first.index(n) if n in first else len(first) + i) for i, n in enumerate(methods)}
    while ready or running:
        while ready and len(running) < args.workers:
            ready.sort(key=lambda j: (methods[j["method"]]["epochs"], order[j["method"]], j["seed"]))
            j = ready.pop(0)
            running[pool.submit(run_one, j)] = j
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in done:
            j = running.pop(future)
            run = future.result()
            runs[(run["method"], run["lr"], run["beta"], run["seed"])] = summarize_run(run)
            bar.update(1)
            outstanding[j["method"]] -= 1
            if not outstanding[j["method"]]:
                advance(j["method"])
    for f in followers:
        if f in winners:
            points[f] = {winners[f]: runs[key] for key in [(f, *winners[f], seeds[0])] if key in runs}
    return points, winners, missing, rounds



# ------------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 3 methods, 1 grid point, 2 seeds, 2 epochs")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default="", help="comma-separated subset of method names")
    parser.add_argument("--task", default="", help="TrainConfig 'task' of the study (default: the trainer's own, "
                        "DigitEval); needs a checkout whose TrainConfig has the key")
    parser.add_argument("--target", type=float, default=None, help="score at which a run has reached the target "
                        f"(default: {TASK_TARGETS})")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds at the chosen point (0, 1, ...)")
    parser.add_argument("--max_extensions", type=int, default=3, help="bracketing rounds after the first grid")
    parser.add_argument("--prompts_per_epoch", type=int, default=5, help="distinct prompts per epoch (x group 8)")
    parser.add_argument("--epochs_scale", type=float, default=1.0, help="multiplies every method's epoch budget")
    parser.add_argument("--eval_every", type=int, default=2)
    parser.add_argument("--eval_seeds", type=int, default=10, help="evaluation seeds per prompt (x 10 digits)")
    parser.add_argument("--cache", default="", help="directory of finished runs to reuse (and to save runs in)")
    parser.add_argument("--cached_only", action="store_true", help="with --cache: report only the runs already "
                        "in the cache (a partial study; the report counts the seeds not run)")
    parser.add_argument("--no_memory", action="store_true", help="skip the memory-per-step section")
    return parser, parser.parse_args(argv)


def main(argv=None) -> dict:
    parser, args = parse_args(argv)
    if args.target is None:
        args.target = TASK_TARGETS.get(args.task or "digiteval", TARGET)
    methods = method_table()
    seeds, scale, quick_epochs = tuple(range(args.seeds)), {"prompts_per_epoch": args.prompts_per_epoch}, None
    if args.quick:
        methods = {k: methods[k] for k in ("flowgrpo_nocfg", "diffusionnft", "recipe", "recipe_sde")}
        for m in methods.values():
            m["lrs"], m["betas"] = (m["published"][0],), (m["published"][1],)
        seeds, quick_epochs = (0, 1), 2
        scale = dict(prompts_per_epoch=2, group_size=4)
        args.eval_every, args.eval_seeds, args.max_extensions = 1, 2, 0
    if args.methods:
        wanted = args.methods.split(",")
        unknown = sorted(set(wanted) - set(methods))
        if unknown:
            parser.error(f"unknown method(s) {unknown}; known: {', '.join(methods)}")
        methods = {k: methods[k] for k in wanted}
        for name in wanted:
            if methods[name].get("follows") not in (None, *methods):
                parser.error(f"method {name} runs at {methods[name]['follows']}'s chosen point: list that too")
    if args.task:
        for m in methods.values():
            m["overrides"] = dict(m["overrides"], task=args.task)
    for m in methods.values():
        m["epochs"] = quick_epochs or max(1, round(m["epochs"] * args.epochs_scale))

    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from tqdm.auto import tqdm

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="design_space_")

    def job(name, lr, beta, seed):
        m = methods[name]
        spec = dict(method=name, lr=lr, beta=beta, seed=seed, overrides=m["overrides"], epochs=m["epochs"],
                    eval_every=args.eval_every, eval_seeds=args.eval_seeds, scale=scale, target=args.target,
                    output_dir=f"{tmp.name}/{name}_lr{lr:g}_b{beta:g}_s{seed}", cache=args.cache)
        spec["config"] = resolve_config(spec)
        return spec

    runs: Dict[tuple, dict] = {}  # (method, lr, beta, seed) -> summarize_run(...)
    context = multiprocessing.get_context("spawn")
    bar = tqdm(desc="runs", unit="run", dynamic_ncols=True, total=0)
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context, initializer=die_with_parent) as pool:
        previous = stop_pool_on_signals(pool)
        try:
            # Phase 0: the base model as each method deploys it.
            checks = list(pool.map(base_check, [dict(job(n, *methods[n]["published"], 0), output_dir=f"{tmp.name}/base_{n}")
                                                for n in methods]))
            base = {c["method"]: c for c in checks}
            trained = [n for n in methods if not (base[n]["score"] >= args.target and base[n]["diversity"] >= MIN_DIVERSITY)]
            swept = [n for n in trained if not methods[n].get("follows")]
            followers = [n for n in trained if methods[n].get("follows")]
            points, winners, missing, rounds = schedule(pool, methods, swept, followers, seeds, job, runs, bar, args)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    bar.close()
    swept = [n for n in swept if n in winners]  # --cached_only: a method with no run in the cache is left out
    followers = [n for n in followers if n in winners]
    tmp.cleanup()

    result = {"task": args.task or "digits (DigitEval)", "target": args.target, "min_diversity": MIN_DIVERSITY,
              "methods": {}}
    for name, m in methods.items():
        entry = {"label": m["label"], "source": m["source"], "overrides": m["overrides"], "published": m["published"],
                 "epoch_budget": m["epochs"], "base": base[name], "follows": m.get("follows")}
        if name in swept or name in followers:
            seed_runs = [runs[(name, *winners[name], s)] for s in seeds if (name, *winners[name], s) in runs]
            entry.update(summarize_method(
                {f"{lr:g}/{beta:g}": s for (lr, beta), s in points[name].items()}, winners[name],
                missing[name], seed_runs))
            entry["seeds_not_run"] = len(seeds) - len(seed_runs)
        elif name in trained:
            entry["not_run"] = True  # --cached_only and nothing of it in the cache
        else:
            entry["at_target_before_training"] = True
        result["methods"][name] = entry
    from design_space_report import speedups

    result["speedups"] = speedups(result)
    if not args.no_memory:
        from design_space_memory import memory_per_method, sd3_kept_bytes

        result["memory"] = memory_per_method({n: m for n, m in methods.items() if n != "flowgrpo_nocfg"}, scale)
        result["memory_note"] = (
            "kept_bytes: tensors the estimator needs from the rollout at loss time (ELBO: final x0 [B, *S]; "
            "trajectory: latents [B, T+1, *S] + log-probs [B, T] + final). *_peak_bytes: the torch profiler's "
            "allocation peak (benchmarks/memory.py) of one policy step on the whole epoch batch (loss+backward), "
            "and of rollout+loss+backward; activations of this tiny model dominate those peaks.")
        result["memory_sd3_scale"] = sd3_kept_bytes()
    result["settings"] = {
        "seeds": list(seeds), "eval_every": args.eval_every, "eval_seeds": args.eval_seeds,
        "batch": scale.get("prompts_per_epoch", 10) * scale.get("group_size", 8), "workers": args.workers,
        "threads_per_worker": 1, "quick": args.quick, "max_extensions": args.max_extensions,
        "extension_rounds": rounds, "cached_only": args.cached_only, "collapse_stop": COLLAPSE, "diverged_stop": DIVERGED,
        "command": "python benchmarks/design_space.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])),
        "machine": f"{os.cpu_count()} CPU cores, torch CPU, shared with other jobs (load average at end "
                   f"{os.getloadavg()[0]:.1f})",
        "wall_minutes": (time.perf_counter() - started) / 60,
    }
    stem = out_dir / ("design_space" if args.task in ("", "digiteval") else f"design_space_{args.task}")
    stem.with_suffix(".json").write_text(json.dumps(finite_json(result), indent=1))
    write_markdown(result, stem.with_suffix(".md"))
    write_plot(result, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text().split("\n## ")[0])
    print(f"wrote {stem.with_suffix('.json')}, .md, .png ({result['settings']['wall_minutes']:.1f} min)")
    return result


if __name__ == "__main__":
    main()
