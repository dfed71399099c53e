"""The RL fine-tuning loop. One epoch reads like the algorithm:

    prompts    <- prompt groups (prompts_per_epoch x group_size)
    rollout    <- sample with the old policy (ODE or SDE, optional CFG), no grad
    rewards    <- reward_fn(decoded images, prompts)
    advantages <- per-prompt group statistics of the rewards
    loss       <- ELBO or trajectory estimator -> fused policy loss; backward
    step       <- clip gradients, optimizer step (skipped when anything is non-finite)
    old        <- d old + (1 - d) current,  d = min(old_decay_rate * step, old_decay_max)
    ema        <- e ema + (1 - e) current   (the policy that is evaluated and shipped)
    anchor     <- a anchor + (1 - a) current, a = min(anchor_decay_rate * step, anchor_decay_max)
                  (AWM's KL anchor, only with anchor_beta > 0)

Failures (docs/reliability.md): a non-finite value anywhere in an epoch (rollout, model
outputs, rewards, loss, gradients) skips that epoch's update -- optimizer, old and EMA
untouched, the record says "skipped" and why -- or, with on_non_finite "raise", stops the
run; max_consecutive_skips skips in a row stop it too (NonFiniteError). A reward function
that raises or returns the wrong number of scores stops the run (RewardError): a rollout
is never dropped or scored twice. Every process takes the same decision at the same point
(one small all-reduce), so a multi-process run never deadlocks on a one-sided skip.

Policies live on one transformer: LoRA adapters "default" (trained), "old" and
"ema", with the reference = adapters disabled; with lora_rank = 0 the whole
transformer is trained and frozen copies play old / ema / reference (policies.py).
Non-finite values are recorded, agreed and acted on in nonfinite.py; the loss of
each likelihood estimator is in policy_step.py.
"""

from __future__ import annotations

import hashlib
import time
import warnings
import weakref
from pathlib import Path
from typing import Dict, Optional

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list

from ..advantages import PerPromptStatTracker
from ..backends import resolve_backend
from ..estimators import weighting_record
from ..objectives import objective_record
from ..rewards.registry import score_column
from ..sampling import cfg_velocity, ode_sample, sde_sample, timestep_grid
from . import faults, resume_notes, run_dir
from .config import TrainConfig, require_known_reward
from .errors import ConfigError, NonFiniteError, Preempted, RewardError, RunWarning  # noqa: F401 - re-exported
from .nonfinite import SKIP_REASONS, NonFiniteGuard  # noqa: F401 - SKIP_REASONS re-exported
from .lock import RunLock  # noqa: F401 - the type of run_lock
from .outputs import RunOutputs
from .policy_step import POLICY_STEPS, Rollout
from .preemption import Abandon, Preemption, StopRequest
from .ranks import FailureChannel, init_elastic_restart
from .policies import PolicySet
from .sharding import check_fsdp_launch
from .state import load_state, save_state
from .trackers import build_trackers, tracker_names
from .task import Task, load_task


class Trainer(PolicySet, NonFiniteGuard, Preemption):
    def __init__(self, config: TrainConfig, task: Optional[Task] = None):
        config.validate()
        if task is None:
            require_known_reward(config.reward)
        # Before anything initialises the process group (PartialState below does): torchrun
        # --max-restarts needs the restarted group's own keys (ranks.py).
        init_elastic_restart()
        # output_dir none: a directory per task and run, chosen once for every process (run_dir.py).
        state = PartialState(cpu=not torch.cuda.is_available())
        broadcast = (lambda value: broadcast_object_list([value])[0]) if state.num_processes > 1 else None
        self.config = config = run_dir.resolve(config, state.is_main_process, broadcast)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.sharded = check_fsdp_launch(config)  # FSDP2, see sharding.py
        trackers = build_trackers(tracker_names(config.report_to, config.tensorboard), Path(config.output_dir))
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
                                       log_with=trackers or None)
        # From here on, an error on this process is reported to the others (ranks.py).
        self.failures = FailureChannel(self.accelerator.process_index, self.accelerator.num_processes)
        self.run_lock: Optional[RunLock] = None
        try:
            self._build(config, task)
        except BaseException as error:
            self.release_output_dir()
            self.failures.report(error)
            raise

    def _build(self, config: TrainConfig, task: Optional[Task]) -> None:
        self.device = self.accelerator.device
        world = self.accelerator.num_processes
        if config.batch_size % world:  # before loading anything
            raise ConfigError(f"config keys 'prompts_per_epoch' * 'group_size' = {config.prompts_per_epoch} * "
                              f"{config.group_size} = {config.batch_size} must be divisible by the number of "
                              f"processes ({world}), so every process holds an equal share")
        # A finished run to resume: nothing to do, no model loaded (resume_notes.py); else this run's
        # claim on output_dir, with the lock on it on the main process (run_dir.py, lock.py).
        self.finished, self.run_lock = run_dir.open_run(config, self.accelerator.is_main_process)
        if self.finished is not None:
            return
        if self.run_lock is not None:
            weakref.finalize(self, self.run_lock.release)
        # Build or load the fused kernels now, not inside the first timed epoch: a first build takes a
        # minute, which showed as a flat gap in the learning curve and a progress bar stuck at 0%.
        resolve_backend(config.backend, self.device)
        torch.manual_seed(config.seed)
        self.task = task or load_task(
            config.model, config.reward, device=self.device, eval_seeds=config.eval_seeds, prompts=config.prompts,
            task=config.task,
            weights_dtype=config.weights_dtype, resolution=config.resolution,
            gradient_checkpointing=config.gradient_checkpointing, without_t5=config.without_t5,
            frames=config.frames, guidance=config.guidance, lora_target_modules=config.lora_target_modules,
        )
        self.model = self.task.model
        self.output = RunOutputs(Path(config.output_dir), config, enabled=self.accelerator.is_main_process,
                                 accelerator=self.accelerator)
        self.tracker = PerPromptStatTracker(global_std=config.advantage_std == "global", scale=config.advantage_scale,
                                            adv_clip_max=config.adv_clip_max)
        # The config named them and validate() checked them: resolved once, not per micro-batch.
        self.objective = objective_record(config.objective)
        self.weighting = weighting_record(config.weighting, config.ghuber_power if config.weighting == "ghuber" else None)
        self.epoch = 0
        self.step = 0
        self.history: list = []
        self.transformer_rows = 0  # rows through the transformer: a device-independent cost measure
        self.consecutive_skips = 0
        self.skip_reason: Optional[str] = None  # one of SKIP_REASONS once this epoch met a non-finite value
        self.skip_detail = ""
        self._epoch_number: Optional[int] = None  # 1-based epoch in progress (fault hooks, messages)
        self._phase: Optional[str] = None  # "rollout" | "update" while those run
        self._policy_name = "current"
        self.stop_request = StopRequest()  # SIGTERM / SIGINT / SIGUSR1 during fit (preemption.py)
        self._stepped_this_epoch = False
        self._setup_policies()

    # --- model calls ------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The active policy's velocity; a non-finite output is recorded (the epoch will be skipped)
        and replaced by zeros, so that every process still reaches the same agreement point."""
        self.transformer_rows += x.shape[0]
        if self._phase == "rollout":
            faults.point("rollout", self._epoch_number, self.accelerator.process_index)
            self._stop_point()
        with self.accelerator.autocast():
            out = self.model.velocity(x, t, cond)
        if self._phase is not None:
            hook = "rollout_velocity" if self._phase == "rollout" else "velocity"
            out = faults.corrupt(hook, self._epoch_number, out, self.accelerator.process_index)
            # One read of the output: small next to the forward that made it.
            if not bool(torch.isfinite(out).all()):
                bad = int((~torch.isfinite(out)).sum())
                self._flag("rollout" if self._phase == "rollout" else "model_output",
                           f"the {self._policy_name} policy's velocity held {bad} non-finite value(s) during "
                           f"the {self._phase}")
                out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def guided_velocity(self, x: torch.Tensor, t: torch.Tensor, prompts) -> torch.Tensor:
        """The rollout velocity for these prompts (with CFG when guidance_scale > 1)."""
        cond = self.model.encode_prompts(prompts)
        fn = cfg_velocity(lambda x_, t_: self.velocity(x_, t_, cond),
                          lambda x_, t_: self.velocity(x_, t_, self.model.encode_prompts([""] * len(prompts))),
                          self.config.guidance_scale)
        return fn(x, t)

    def total_transformer_rows(self) -> int:
        """Rows through the transformer so far, summed over processes."""
        if self.accelerator.num_processes == 1:
            return self.transformer_rows
        count = torch.tensor([self.transformer_rows], dtype=torch.float64, device=self.device)
        return int(self.accelerator.reduce(count, reduction="sum").item())

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss, unless this epoch met a non-finite value (on any process)."""
        self._stop_point()
        loss = faults.corrupt("loss", self._epoch_number, loss, self.accelerator.process_index)
        if not bool(torch.isfinite(loss).all()):
            self._flag("loss", f"the loss is {float(loss.detach())}")
        if self._agreed_reason() is not None:
            return
        self.accelerator.backward(loss)
        faults.point("backward", self._epoch_number, self.accelerator.process_index)

    # --- the algorithm's pieces ---------------------------------------------------------------------
    def generator(self, epoch: int, purpose: str, index: int = 0) -> torch.Generator:
        """A generator for (seed, epoch, purpose, global sample index).

        Randomness is keyed by the sample's index in the global batch, not by the process: a
        resumed run redraws exactly what it would have, a sample gets the same latents whichever
        process holds it, and no two samples (hence no two processes) share latents.
        """
        key = f"{self.config.seed}/{epoch}/{purpose}/{index}".encode()
        return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)

    def local_samples(self) -> range:
        """This process's contiguous block of the global batch (whole batch with one process)."""
        per_process = self.config.batch_size // self.accelerator.num_processes
        start = self.accelerator.process_index * per_process
        return range(start, start + per_process)

    def sample_prompts(self, generator: torch.Generator) -> list:
        """The global batch's prompts: prompts_per_epoch prompts, each repeated group_size times."""
        pool = self.task.prompts
        cfg = self.config
        if cfg.prompts_per_epoch <= len(pool):
            chosen = torch.randperm(len(pool), generator=generator)[: cfg.prompts_per_epoch]
        else:
            chosen = torch.randint(len(pool), (cfg.prompts_per_epoch,), generator=generator)
        return [pool[i] for i in chosen.tolist() for _ in range(cfg.group_size)]

    @torch.no_grad()
    def rollout(self, prompts: list, epoch: int, samples: range) -> Rollout:
        """Samples ``samples`` of the global batch (their prompts given) with the old policy (or the
        current one, with rollout_policy "current")."""
        cfg = self.config
        shape = tuple(self.model.latent_shape)
        x1 = torch.stack([torch.randn(shape, generator=self.generator(epoch, "rollout", i)) for i in samples])
        x1 = x1.to(self.device)
        sigmas = self.sigmas(cfg.num_steps)
        with self.policy(cfg.rollout_policy):
            velocity = lambda x, t: self.guided_velocity(x, t, prompts)  # noqa: E731
            if cfg.sampler == "ode":
                return Rollout(prompts, ode_sample(velocity, x1, sigmas, method=cfg.ode_method), sigmas)
            # The SDE's step noise is drawn for the whole block, keyed by its first sample.
            trajectory = sde_sample(velocity, x1, sigmas, noise_level=cfg.noise_level, sde_type=cfg.sde_type,
                                    generator=self.generator(epoch, "sde", samples.start), backend=cfg.backend)
        # The ELBO estimator needs only the final sample: the trajectory is not kept.
        return Rollout(prompts, trajectory.final, sigmas, trajectory if cfg.estimator == "trajectory" else None)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The sampler grid: ``shift`` from the config, else the model's own (1 for digits, 3 for SD3)."""
        shift = self.config.shift if self.config.shift is not None else getattr(self.model, "sampler_shift", 1.0)
        return timestep_grid(num_steps, shift=shift, device=self.device)

    def rewards(self, rollout: Rollout) -> torch.Tensor:
        """Rewards of the whole global batch (gathered across processes, in global order).

        Raises:
            RewardError: the reward function raised, or its scores["avg"] is not one number per
            image (on any process: every process raises). NaN / Inf scores are returned as they
            are; the caller skips the update (or raises, per on_non_finite).
        """
        epoch, process = self._epoch_number, self.accelerator.process_index
        images = self.model.decode(rollout.final)
        count = len(rollout.prompts)
        failure = None
        try:
            faults.point("reward", epoch, process)  # "raise" here stands for the reward function raising
            scores, _ = self.task.reward_fn(images, rollout.prompts, None)
            local = score_column(scores, count)
        except Exception as error:  # noqa: BLE001 - every failure is re-raised below, with context
            failure, local = error, None
        if self._agree(failure is not None):
            where = f"on {count} images of epoch {epoch}" + (f" (process {process})" if self.accelerator.num_processes > 1 else "")
            if failure is None:
                raise RewardError(f"the reward function failed on another process at epoch {epoch}")
            raise RewardError(f"the reward function failed {where}: {type(failure).__name__}: {failure}; no "
                              f"update was made from this rollout (resume from the last checkpoint once the "
                              f"reward is fixed)") from failure
        local = faults.corrupt("reward", epoch, local.to(self.device), process)
        return self.accelerator.gather(local).cpu()

    def _agree(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        return bool(self.accelerator.reduce(value, reduction="max").item())

    def advantages(self, prompts: list, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages of the global batch from its per-prompt group statistics."""
        self.tracker.clear()
        advantages = self.tracker.update(prompts, rewards.numpy(), type=self.config.advantage_mode)
        return torch.as_tensor(advantages, dtype=torch.float32)

    def optimizer_step(self, blend: bool = True) -> bool:
        """Clip, check, step and (with ``blend``) update old / ema; returns False (and changes nothing) when
        this epoch met a non-finite value or the gradients are non-finite (then ``skip_reason`` says which)."""
        cfg = self.config
        self._check_gradients()
        stepped = self._agreed_reason() is None
        if stepped:
            if cfg.grad_clip > 0 and self.sharded:
                torch.nn.utils.clip_grad_norm_(self.parameters, cfg.grad_clip)  # a norm over all shards
            elif cfg.grad_clip > 0:
                self.accelerator.clip_grad_norm_(self.parameters, cfg.grad_clip)
            self.optimizer.step()
            self._stepped_this_epoch = True  # from here on a stop finishes the epoch (preemption.py)
            faults.point("optimizer", self._epoch_number, self.accelerator.process_index)
            self.step += 1
            if blend:
                self.update_old_and_ema()
        self.optimizer.zero_grad(set_to_none=True)
        return stepped

    def inner_parts(self, epoch: int, count: int) -> list:
        """inner_steps > 1: this process's samples shuffled (keyed by seed and epoch) and split into
        inner_steps parts, one optimizer step each (FlowGRPO's num_batches_per_epoch)."""
        order = torch.randperm(count, generator=self.generator(epoch, "inner_steps"))
        return list(torch.tensor_split(order, self.config.inner_steps))

    def _inner_steps(self, rollout: Rollout, advantages: torch.Tensor, draws, parts, timer):
        """Several optimizer steps on parts of one epoch's rollout; the old policy (and EMA) move once,
        after the last, so every part's ratio is taken against the same old policy."""
        stats_parts, stepped = [], []
        for part in parts:
            sub = rollout.select(part)
            with timer("loss_backward"):
                stats = self._run("update", self._policy_step, sub, advantages[part],
                                  [draws[i] for i in part.tolist()])
            with timer("optimizer"):
                stepped.append(self.optimizer_step(blend=False))
            stats_parts.append(stats)
        if any(stepped):
            self.update_old_and_ema()
        keys = set().union(*stats_parts) if stats_parts else set()
        stats = {k: (max if k == "ratio_max" else _mean)([s[k] for s in stats_parts if k in s]) for k in keys}
        return stats, all(stepped)

    def reduce_stats(self, stats: Dict[str, float]) -> Dict[str, float]:
        """Mean of each statistic over processes (max for ratio_max)."""
        if self.accelerator.num_processes == 1:
            return stats
        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        mean = self.accelerator.reduce(values.clone(), reduction="mean")
        peak = self.accelerator.reduce(values.clone(), reduction="max")
        return {k: float(peak[i] if k == "ratio_max" else mean[i]) for i, k in enumerate(keys)}

    def _run(self, phase: str, fn, *args):
        self._phase = phase
        try:
            return fn(*args)
        finally:
            self._phase = None

    def _policy_step(self, rollout: Rollout, advantages: torch.Tensor, generators) -> Dict[str, float]:
        """The estimator's loss and backward; ``generators``: one per local sample, for its draws."""
        try:
            stats = POLICY_STEPS[self.config.estimator](self, rollout, advantages, generators)
        except ValueError as error:
            # The public ops name a non-finite argument with a ValueError; that is a skip, not a crash.
            # (With several processes the velocity and loss hooks catch non-finite values first.)
            if "non-finite" not in str(error):
                raise
            self._flag("loss", f"{error}")
            return {}
        return self.reduce_stats(stats)

    # --- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prompts, num_steps: int = 10, guidance_scale: float = 1.0, seed=0) -> torch.Tensor:
        """Images of the evaluation policy: Euler ODE, one noise generator per row seed (as the pipelines do)."""
        seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
        shape = tuple(self.model.latent_shape)
        x1 = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        cond = self.model.encode_prompts(list(prompts))
        uncond = self.model.encode_prompts([""] * len(prompts))
        velocity = cfg_velocity(lambda x, t: self.model.velocity(x, t, cond),
                                lambda x, t: self.model.velocity(x, t, uncond), guidance_scale)
        with self.policy(self.evaluation_policy()):
            final = ode_sample(velocity, x1.to(self.device), self.sigmas(num_steps))
        return self.model.decode(final)

    def evaluate(self) -> dict:
        if self.task.evaluate is None:
            return {}
        cfg = self.config
        if cfg.eval_num_steps is None and cfg.eval_guidance_scale is None:
            return self.task.evaluate(self.sample)

        def as_deployed(prompts, num_steps: int = 10, guidance_scale: float = 1.0, seed=0):
            """The task's sampler call with eval_num_steps / eval_guidance_scale in place of its own."""
            return self.sample(prompts, num_steps=num_steps if cfg.eval_num_steps is None else cfg.eval_num_steps,
                               guidance_scale=guidance_scale if cfg.eval_guidance_scale is None
                               else cfg.eval_guidance_scale, seed=seed)

        return self.task.evaluate(as_deployed)

    # --- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the configured end and return the summary. An exception on any process is
        reported to the others, which stop with it instead of waiting in a collective (ranks.py).

        Raises:
            Preempted: SIGTERM, SIGINT or SIGUSR1 arrived; a verified checkpoint was written first
            (preemption.py). Every process raises it at the same point.
        """
        if self.finished is not None:  # nothing to do, nothing written (resume_notes.py)
            if self.accelerator.is_main_process:
                print(resume_notes.finished_line(self.finished, self.config), flush=True)
            return self.finished
        self.stop_request.install()
        try:
            summary = self._fit()
        except Preempted:
            raise  # agreed by every process: nothing to report
        except BaseException as error:
            self.failures.report(error)
            raise
        else:
            self.failures.close()
            return summary
        finally:
            self.stop_request.uninstall()
            self.release_output_dir()

    def release_output_dir(self) -> None:
        """Let another run write output_dir (done when fit ends; lock.py)."""
        if self.run_lock is not None:
            self.run_lock.release()

    def _fit(self) -> dict:
        cfg = self.config
        main = self.accelerator.is_main_process
        start = time.perf_counter()
        if cfg.resume and load_state(self):
            before = self.output.summary_before
            if main:
                print(resume_notes.resumed_line(self.output.checkpoint, self.epoch, cfg.epochs), flush=True)
        else:
            if cfg.resume is True and self.accelerator.is_main_process:  # "auto": an empty directory is expected
                warnings.warn(f"nothing to resume in {cfg.output_dir} (no checkpoint): starting a fresh run",
                              RunWarning, stacklevel=2)
            before = self.evaluate()
            self.output.start(before, self.sample, self.task.prompts)
        clock = self.output.clock_offset
        progress = self.output.progress(cfg.epochs, initial=self.epoch)
        try:
            stopped = self._epochs(before, progress, clock, start)
        except Abandon:
            stopped = None
            self._preempt(before, progress, snapshot=self._snapshot)
        progress.close()
        if stopped and main:  # the progress bar stops short of epochs: say why
            print(stopped, flush=True)
        return self.output.finish(self, before, clock + time.perf_counter() - start)

    def _epochs(self, before: dict, progress, clock: float, start: float) -> Optional[str]:
        """Epochs from self.epoch to the end, to stop_at, or to a stop signal (preemption.py); returns
        the line that says the run stopped early at stop_at, else None."""
        cfg = self.config
        for epoch in range(self.epoch, cfg.epochs):
            self._snapshot = self._epoch_snapshot()
            self._stop_point()
            timer = self.output.timer()
            self._epoch_number = epoch + 1
            self.skip_reason, self.skip_detail = None, ""
            prompts = self.sample_prompts(self.generator(epoch, "prompts"))
            samples = self.local_samples()
            local_prompts = prompts[samples.start:samples.stop]
            with timer("rollout"):
                rollout = self._run("rollout", self.rollout, local_prompts, epoch, samples)
                self._check_rollout(rollout)
            with timer("reward"):
                rewards = self.rewards(rollout)
            self._stop_point()
            finite = torch.isfinite(rewards)
            if not bool(finite.all()):
                self._flag("reward", f"{int((~finite).sum())} of {rewards.numel()} rewards are NaN or Inf")
            stats: Dict[str, float] = {}
            if cfg.inner_steps > 1 and self._agreed_reason() is None:
                advantages = self.advantages(prompts, rewards)[samples.start:samples.stop]
                generators = [self.generator(epoch, "draws", i) for i in samples]
                stats, stepped = self._inner_steps(rollout, advantages, generators,
                                                   self.inner_parts(epoch, len(samples)), timer)
            else:
                if self._agreed_reason() is None:  # a skipped epoch's rollout is never trained on
                    advantages = self.advantages(prompts, rewards)[samples.start:samples.stop]
                    with timer("loss_backward"):
                        generators = [self.generator(epoch, "draws", i) for i in samples]
                        stats = self._run("update", self._policy_step, rollout, advantages, generators)
                with timer("optimizer"):
                    stepped = self.optimizer_step()
            self.epoch = epoch + 1
            self.consecutive_skips = 0 if stepped else self.consecutive_skips + 1
            shown = rewards[finite] if bool(finite.any()) else rewards
            record = {"epoch": self.epoch, "step": self.step, "skipped": not stepped,
                      "reward_mean": float(shown.mean()), "reward_std": float(shown.std()) if shown.numel() > 1 else 0.0,
                      "zero_std_ratio": self.tracker.zero_std_ratio if stats else None,
                      "transformer_rows": self.total_transformer_rows(), **stats, **timer.seconds}
            if not stepped:
                record.update(skip_reason=self.skip_reason, skip_detail=self.skip_detail,
                              consecutive_skips=self.consecutive_skips)
            due = cfg.eval_every > 0 and self.epoch % cfg.eval_every == 0
            if due or self.epoch == cfg.epochs:
                record.update(self.output.eval_record(self.evaluate(), self.task.metric))
            record["seconds"] = clock + time.perf_counter() - start
            self.history.append(record)
            self.output.log(record, progress)
            if not stepped:
                self._stop_if_too_many_skips(progress)
            reached = cfg.stop_at is not None and record.get(self.task.metric, 0.0) >= cfg.stop_at
            last = self.epoch == cfg.epochs or reached
            if last or (cfg.checkpoint_every > 0 and self.epoch % cfg.checkpoint_every == 0):
                self.output.checkpoint = save_state(self, before)
                self.accelerator.wait_for_everyone()
            if reached:
                return (f"stopped early at epoch {self.epoch} of {cfg.epochs}: {self.task.metric} "
                        f"{record[self.task.metric]:.3f} reached stop_at {cfg.stop_at:g}")
            if self._stop_agreed():
                self._preempt(before, progress)
        return None


def _mean(values) -> float:
    return sum(values) / len(values)
