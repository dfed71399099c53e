"""Variance of the ELBO log-ratio and of the pepg policy gradient per estimator option, on DigitEval.

The policies are the real trainer's: the default recipe (`elbo-kernels train`'s TrainConfig) runs
TRAIN_EPOCHS epochs, and then

    current  theta = the partially trained LoRA ("default" adapter)
    old      the base model (adapters disabled)

A fixed batch of B final samples is drawn once with the old policy (Euler ODE on the 10-step grid,
no CFG, as rollouts are), rewards and per-prompt advantages (reward - group mean) with the trainer's
reward. Then each method draws K (t, eps) per sample, R times afresh, on the same x0 and parameters:

    log-ratio  l_b = sum_k w_k (e_theta - e_old)_k / K per sample b (adaptive weighting; w = 1 except
               under importance sampling); reported: Var_r(l_b), averaged over the B samples
    gradient   d/d(LoRA) of the trainer's pepg loss (no KL) on the batch; reported: the trace of its
               covariance over the R repeats, and the variance of its projection on a fixed unit vector

Every method costs the same transformer rows at one K (B*K rows, two forwards and one backward), so a
ratio baseline-variance / method-variance is the gain at equal rows. Intervals: 95% bootstrap over the
repeats (both methods resampled independently). The methods (TrainConfig options in brackets):

    default        grid t (4 of the 10 rollout steps, without replacement), iid eps         [the default]
    antithetic     (eps, -eps) pairs sharing their grid t                                    [noise_mode=antithetic]
    stratified     t stratified on (0, 1], iid eps                                           [timestep_sampler=stratified]
    sobol          randomised Sobol t and eps                                                [timestep_sampler=sobol noise_mode=sobol]
    importance     grid t drawn from q ~ sqrt(E[l^2 | t]) (measured on separate pilot draws,
                   25% uniform), draws reweighted by 1/(M q)                                 [timestep_proposal=...]
    group          the samples of a prompt group share their draws (common random numbers)  [group_draws=true]
    grid_stratified  grid t by a randomly shifted lattice: one per block of M/K steps       [timestep_sampler=grid_stratified]
    + combinations; and, for the control-variate question, the best coefficient c on e_old
      (l_c = e_theta - c e_old) measured on the draws themselves (an upper bound on that option).

Then the time-to-target effect: the default recipe with and without the best option, SEEDS seeds each,
transformer rows and process CPU seconds to DigitEval 0.9 at diversity >= 0.7 (benchmarks/design_space.py's
runner and stop rule), single-threaded, at most 2 runs in parallel; medians with bootstrap 95% intervals.

    python benchmarks/variance_study.py           # writes benchmarks/results/variance.{json,md,png}
    python benchmarks/variance_study.py --quick   # CI smoke: 2 training epochs, few repeats, no time-to-target
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elbo_kernels._argparse import Parser  # noqa: E402
from variance_report import bootstrap_ratio, median_interval, write_markdown, write_plot  # noqa: E402

TRAIN_EPOCHS = 15
TARGET, MIN_DIVERSITY, COLLAPSE = 0.9, 0.7, 0.55
PROMPTS, GROUP = 5, 4
METHODS = {
    "default": dict(),
    "antithetic": dict(noise_mode="antithetic"),
    "importance": dict(importance=True),
    "group": dict(group_draws=True),
    "stratified": dict(timestep_sampler="stratified"),
    "sobol": dict(timestep_sampler="sobol", noise_mode="sobol"),
    "group+sobol": dict(group_draws=True, timestep_sampler="sobol", noise_mode="sobol"),
    "grid_stratified": dict(timestep_sampler="grid_stratified"),
    "grid_stratified+sobol": dict(timestep_sampler="grid_stratified", noise_mode="sobol"),
    "grid_stratified+antithetic": dict(timestep_sampler="grid_stratified", noise_mode="antithetic"),
}


class Setup:
    """The partially trained policies, the fixed batch and everything a measurement needs."""

    def __init__(self, epochs: int, seed: int = 0):
        from elbo_kernels.train import TrainConfig, Trainer
        from elbo_kernels.sampling import ode_sample

        self.tmp = tempfile.TemporaryDirectory()
        cfg = TrainConfig(output_dir=self.tmp.name, epochs=epochs, eval_every=0, eval_seeds=2, seed=seed,
                          checkpoint_every=0, plots=False, tensorboard=False, progress=False, stop_at=None)
        self.trainer = trainer = Trainer(cfg.validate())
        trainer.fit()
        self.model = trainer.model
        self.grid = trainer.sigmas(cfg.num_steps).cpu()
        generator = torch.Generator().manual_seed(seed + 1)
        from elbo_kernels.models.digits.data import prompt

        self.prompts = [prompt(d) for d in range(PROMPTS) for _ in range(GROUP)]
        cond = self.model.encode_prompts(self.prompts)
        x1 = torch.randn((len(self.prompts),) + tuple(self.model.latent_shape), generator=generator)
        with torch.no_grad(), trainer.policy("reference"):
            self.x0 = ode_sample(lambda x, t: self.model.velocity(x, t, cond), x1, self.grid)
        from elbo_kernels.train.policy_step import Rollout
        rewards = trainer.rewards(Rollout(self.prompts, self.x0, self.grid)).float().reshape(PROMPTS, GROUP)
        self.rewards = rewards.reshape(-1)
        self.advantages = (rewards - rewards.mean(1, keepdim=True)).reshape(-1)
        self.params = list(trainer.parameters)
        numel = sum(p.numel() for p in self.params)
        self.direction = torch.randn(numel, generator=generator, dtype=torch.float64)
        self.direction /= self.direction.norm()
        self.config = cfg

    def log_ratio_draws(self, t: torch.Tensor, eps: torch.Tensor, k: int):
        """(e_theta, e_old) per draw [B*K] at given draws (no gradient)."""
        from elbo_kernels.estimators import elbo, noising

        cond = self.model.encode_prompts([p for p in self.prompts for _ in range(k)])
        x_t = noising(self.x0, t, eps)
        with torch.no_grad():
            v = self.model.velocity(x_t, t, cond)
            with self.trainer.policy("reference"):
                v_old = self.model.velocity(x_t, t, cond)
        return elbo(v, self.x0, eps, t).double(), elbo(v_old, self.x0, eps, t).double()


def draw(state: Setup, method: dict, k: int, generators, proposal):
    """t, eps, weights [B*K] for one repeat, through the trainer's own draw code (policy_step.py)."""
    from types import SimpleNamespace

    from elbo_kernels.estimators import sample_noise
    from elbo_kernels.train.policy_step import draw_timesteps, share_within_groups

    cfg = SimpleNamespace(draws_per_sample=k, noise_mode=method.get("noise_mode", "iid"),
                          timestep_sampler=method.get("timestep_sampler", "grid"), timestep_first_step=1,
                          timestep_last_step=None,
                          timestep_proposal=",".join(f"{q:.6g}" for q in proposal) if method.get("importance") else None)
    t, w = draw_timesteps(cfg, state.grid, generators)
    shape = tuple(state.x0.shape[1:])
    eps = torch.cat([sample_noise((k,) + shape, k, mode=cfg.noise_mode, generator=g) for g in generators])
    if method.get("group_draws"):
        t, eps, w = share_within_groups(state.prompts, k, t, eps, w)
    return t.float(), eps, w


def measure(state: Setup, name: str, k: int, repeats: int, seed: int, proposal, gradients: bool = True) -> dict:
    from elbo_kernels.estimators import noising
    from elbo_kernels.estimators.importance import scale_row_gradients
    from elbo_kernels.objectives import policy_loss

    method = METHODS[name]
    b = state.x0.shape[0]
    cond = state.model.encode_prompts([p for p in state.prompts for _ in range(k)])
    adv = state.advantages.repeat_interleave(k)
    log_ratios, e_thetas, e_olds, grads = [], [], [], []
    for r in range(repeats):
        generators = [torch.Generator().manual_seed(seed * 100003 + r * 1009 + i) for i in range(b)]
        t, eps, w = draw(state, method, k, generators, proposal)
        weight = torch.ones(b * k, dtype=torch.float64) if w is None else w.double()
        x_t = noising(state.x0, t, eps)
        with torch.no_grad(), state.trainer.policy("reference"):
            v_old = state.model.velocity(x_t, t, cond)
        with torch.set_grad_enabled(gradients):
            v = state.model.velocity(x_t, t, cond)
        from elbo_kernels.estimators import elbo
        e_theta = elbo(v.detach(), state.x0, eps, t).double()
        e_old = elbo(v_old, state.x0, eps, t).double()
        log_ratios.append(((e_theta - e_old) * weight).reshape(b, k).mean(1))
        e_thetas.append((e_theta * weight).reshape(b, k).mean(1))
        e_olds.append((e_old * weight).reshape(b, k).mean(1))
        if gradients:
            vw = v if w is None else scale_row_gradients(v, w)
            loss, _ = policy_loss(vw, v_old, None, state.x0, eps, t, adv, objective="pepg", kl=None)
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, state.params)]).double())
    out = {"method": name, "K": k, "repeats": repeats, "rows_per_estimate": b * k,
           "log_ratio": torch.stack(log_ratios), "e_theta": torch.stack(e_thetas), "e_old": torch.stack(e_olds)}
    if gradients:
        out["grad"] = torch.stack(grads)
    return out


def summarize(m: dict, direction: torch.Tensor) -> dict:
    lr = m["log_ratio"]
    row = {"method": m["method"], "K": m["K"], "repeats": m["repeats"], "rows_per_estimate": m["rows_per_estimate"],
           "log_ratio_mean": float(lr.mean()), "log_ratio_var": float(lr.var(0).mean())}
    # The control-variate question: the best coefficient c on the old ELBO (c = 1 is what l already is).
    et, eo = m["e_theta"], m["e_old"]
    c = ((et - et.mean(0)) * (eo - eo.mean(0))).sum(0) / (eo - eo.mean(0)).square().sum(0)
    row["cv_best_c_median"] = float(c.median())
    row["cv_best_c_var"] = float((et - c * eo).var(0).mean())
    if "grad" in m:
        g = m["grad"]
        row.update(grad_trace_var=float(g.var(0).sum()), grad_proj_var=float((g @ direction).var()),
                   grad_mean_norm=float(g.mean(0).norm()))
    return row


def per_timestep(state: Setup, repeats: int, seed: int = 7) -> list:
    """Per positive grid t: mean, variance and second moment of one draw's l, and corr(l(eps), l(-eps))."""
    grid = state.grid[state.grid > 0]
    b = state.x0.shape[0]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for value in grid.tolist():
        t = torch.full((b,), value)
        plus, minus = [], []
        for _ in range(repeats):
            eps = torch.randn(state.x0.shape, generator=generator)
            a, o = state.log_ratio_draws(t, eps, 1)
            plus.append(a - o)
            a, o = state.log_ratio_draws(t, -eps, 1)
            minus.append(a - o)
        plus, minus = torch.stack(plus), torch.stack(minus)  # [R, B]
        cov = ((plus - plus.mean(0)) * (minus - minus.mean(0))).sum(0) / (repeats - 1)
        corr = cov / (plus.std(0) * minus.std(0))
        out.append({"t": value, "log_ratio_mean": float(plus.mean()), "log_ratio_var": float(plus.var(0).mean()),
                    "log_ratio_second_moment": float(plus.square().mean()),
                    "between_samples_var": float(plus.mean(0).var()), "antithetic_corr": float(corr.mean())})
    return out


class _Stop(Exception):
    pass


def train_to_target(job: dict) -> dict:
    """One default-recipe run with ``job["overrides"]``; stops at the first evaluation with DigitEval >= 0.9
    and diversity >= 0.7 (the trainer's own stop_at ignores diversity), or when diversity collapses below 0.55.
    Returns the reached evaluation's transformer rows and training-only process CPU seconds (None: never)."""
    torch.set_num_threads(1)
    from elbo_kernels.train import TrainConfig, Trainer

    reached = {}

    class TargetTrainer(Trainer):
        def evaluate(self):
            start = time.process_time()
            result = super().evaluate()
            self.eval_cpu += time.process_time() - start
            return result

        def fit(self):
            self.eval_cpu, cpu_start, log = 0.0, time.process_time(), self.output.log

            def log_and_check(record, progress):
                log(record, progress)
                if "digiteval" in record:
                    if record["digiteval"] >= TARGET and record["diversity"] >= MIN_DIVERSITY:
                        reached.update(epoch=record["epoch"], transformer_rows=record["transformer_rows"],
                                       cpu_seconds=time.process_time() - cpu_start - self.eval_cpu,
                                       digiteval=record["digiteval"], diversity=record["diversity"])
                        raise _Stop("target")
                    if record["diversity"] < COLLAPSE:
                        raise _Stop("collapsed")

            self.output.log = log_and_check
            return super().fit()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(output_dir=tmp, seed=job["seed"], stop_at=None, checkpoint_every=0, plots=False,
                          tensorboard=False, progress=False, **job["overrides"])
        stop = "budget"
        try:
            TargetTrainer(cfg.validate()).fit()
        except _Stop as why:
            stop = str(why)
    return {"name": job["name"], "seed": job["seed"], "stop": stop, "reached": reached or None}


def time_to_target(best: dict, seeds, workers: int) -> dict:
    """The default recipe with and without the best option, ``seeds`` each, ``workers`` runs at a time."""
    import multiprocessing as mp

    variants = {"default": {}, "best": best}
    jobs = [dict(name=name, seed=seed, overrides=overrides) for seed in seeds for name, overrides in variants.items()]
    from tqdm import tqdm

    with mp.get_context("spawn").Pool(workers) as pool:
        runs = list(tqdm(pool.imap(train_to_target, jobs), total=len(jobs), desc="time to target"))
    out = {}
    for name in variants:
        mine = [r for r in runs if r["name"] == name]
        hits = [r["reached"] for r in mine if r["reached"]]
        rows = [h["transformer_rows"] for h in hits]
        cpu = [h["cpu_seconds"] for h in hits]
        out[name] = {"overrides": variants[name], "runs": mine, "reached": f"{len(hits)}/{len(mine)}",
                     "transformer_rows": rows, "cpu_seconds": cpu,
                     "rows_median": median_interval(rows), "cpu_median": median_interval(cpu)}
    return out


def main(argv=None) -> dict:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--repeats", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip_time", action="store_true", help="variance only (no time-to-target runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    epochs, ks, repeats, names = TRAIN_EPOCHS, (4,), args.repeats, list(METHODS)
    if args.quick:
        epochs, ks, repeats = 2, (4,), 6
    state = Setup(epochs)
    print(f"trained {epochs} epochs; batch {len(state.prompts)} samples, rewards mean {float(state.rewards.mean()):.3f}",
          flush=True)
    profile = per_timestep(state, max(8, repeats // 2))
    from elbo_kernels.estimators.importance import proposal_from_second_moments

    proposal = proposal_from_second_moments([p["log_ratio_second_moment"] for p in profile]).tolist()
    rows, raw = [], {}
    from tqdm import tqdm

    with tqdm(total=len(ks) * len(names), desc="methods", disable=args.quick) as bar:
        for k in ks:
            for j, name in enumerate(names):
                m = measure(state, name, k, repeats, seed=1000 * k + j, proposal=proposal)
                raw[(name, k)] = m
                rows.append(summarize(m, state.direction))
                bar.update(1)
    for row in rows:
        base = raw[("default", row["K"])]
        mine = raw[(row["method"], row["K"])]
        row["log_ratio_reduction"] = bootstrap_ratio(base["log_ratio"], mine["log_ratio"], "log_ratio")
        row["grad_trace_reduction"] = bootstrap_ratio(base["grad"], mine["grad"], "trace")
        row["grad_proj_reduction"] = bootstrap_ratio(base["grad"] @ state.direction, mine["grad"] @ state.direction,
                                                     "scalar")
        row["cv_reduction_upper_bound"] = row["log_ratio_var"] / row["cv_best_c_var"]
        print(f"K={row['K']} {row['method']:30s} l: {row['log_ratio_reduction']['ratio']:.2f}x "
              f"grad trace: {row['grad_trace_reduction']['ratio']:.2f}x", flush=True)
    k_main = ks[0]
    candidates = [r for r in rows if r["K"] == k_main and r["method"] != "default"]
    best_l = max(candidates, key=lambda r: r["log_ratio_reduction"]["ratio"])
    best_g = max(candidates, key=lambda r: r["grad_trace_reduction"]["ratio"])
    result = {
        "rows": rows, "per_timestep": profile, "importance_proposal": proposal,
        "best_log_ratio": {k: best_l[k] for k in ("method", "K", "log_ratio_reduction", "grad_trace_reduction")},
        "best_gradient": {k: best_g[k] for k in ("method", "K", "log_ratio_reduction", "grad_trace_reduction")},
        "settings": {"train_epochs": epochs, "batch": len(state.prompts), "prompts": PROMPTS, "group_size": GROUP,
                     "repeats": repeats, "ks": list(ks), "weighting": "adaptive", "objective": "pepg (no KL)",
                     "threads": 1, "current": "trained LoRA (default recipe)", "old": "base model",
                     "reward_mean": float(state.rewards.mean()),
                     "command": "python benchmarks/variance_study.py" + (" --quick" if args.quick else "")},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["settings"]["seconds"] = time.perf_counter() - start
    (out / "variance.json").write_text(json.dumps(result, indent=1))  # the variance part, before the long runs
    if not args.quick and not args.skip_time:
        best_overrides = {key: value for key, value in METHODS[best_g["method"]].items() if key != "importance"}
        if METHODS[best_g["method"]].get("importance"):
            best_overrides["timestep_proposal"] = ",".join(f"{q:.4g}" for q in proposal)
        result["time_to_target"] = time_to_target(best_overrides, range(args.seeds), args.workers)
    result["settings"]["seconds"] = time.perf_counter() - start
    (out / "variance.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, out / "variance.md")
    write_plot(result, out / "variance.png")
    print(f"best log-ratio reduction at equal rows (K={k_main}): {best_l['log_ratio_reduction']['ratio']:.2f}x "
          f"({best_l['method']}); best gradient-trace reduction: {best_g['grad_trace_reduction']['ratio']:.2f}x "
          f"({best_g['method']})")
    return result


if __name__ == "__main__":
    main()
