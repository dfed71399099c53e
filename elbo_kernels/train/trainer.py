"""The RL fine-tuning loop. One epoch reads like the algorithm:

    prompts    <- prompt groups (prompts_per_epoch x group_size)
    rollout    <- sample with the old policy (ODE or SDE, optional CFG), no grad
    rewards    <- reward_fn(decoded images, prompts)
    advantages <- per-prompt group statistics of the rewards
    loss       <- ELBO or trajectory estimator -> fused policy loss; backward
    step       <- clip gradients, optimizer step (skipped when anything is non-finite)
    old        <- d old + (1 - d) current,  d = min(old_decay_rate * step, old_decay_max)
    ema        <- e ema + (1 - e) current   (the policy that is evaluated and shipped)

Policies live on one transformer: LoRA adapters "default" (trained), "old" and
"ema", with the reference = adapters disabled; with lora_rank = 0 the whole
transformer is trained and frozen copies play old / ema / reference.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from accelerate import Accelerator

from ..advantages import PerPromptStatTracker
from ..models.lora import active_adapter, add_lora, blend_adapters
from ..sampling import cfg_velocity, ode_sample, sde_sample, timestep_grid
from .config import TrainConfig
from .outputs import RunOutputs
from .policy_step import POLICY_STEPS, Rollout
from .state import load_state, save_state
from .task import Task, load_task

TRACKER_TYPE = {"standard": "grpo", "exact": "exact", "nft": "nft"}


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had non-finite losses or gradients."""


class Trainer:
    def __init__(self, config: TrainConfig, task: Optional[Task] = None):
        self.config = config.validate()
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision)
        self.device = self.accelerator.device
        torch.manual_seed(config.seed)
        self.task = task or load_task(config.model, config.reward, device=self.device, eval_seeds=config.eval_seeds)
        self.model = self.task.model
        self.output = RunOutputs(Path(config.output_dir), config, enabled=self.accelerator.is_main_process)
        self.tracker = PerPromptStatTracker(scale=config.advantage_scale, adv_clip_max=config.adv_clip_max)
        self.epoch = 0
        self.step = 0
        self.history: list = []
        self.transformer_rows = 0  # rows through the transformer: a device-independent cost measure
        world = self.accelerator.num_processes
        if config.batch_size % world:
            raise ValueError(f"prompts_per_epoch * group_size = {config.batch_size} must be divisible by the "
                             f"number of processes ({world}), so every process holds an equal share")
        self._setup_policies()

    # --- policies ---------------------------------------------------------------------------------
    def _setup_policies(self) -> None:
        cfg = self.config
        transformer = self.model.transformer
        transformer.requires_grad_(False)
        self.copies: Dict[str, torch.nn.Module] = {}
        names = ("default", "old") + (("ema",) if cfg.ema_decay > 0 else ())
        if cfg.lora_rank > 0:
            add_lora(transformer, self.model.lora_target_modules, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                     adapter_names=names, init_seed=cfg.seed)
            params = [p for n, p in transformer.named_parameters() if ".default." in n and "lora_" in n]
            for p in params:
                p.requires_grad_(True)
        else:
            self.copies = {"reference": copy.deepcopy(transformer).requires_grad_(False)}
            for name in names[1:]:
                self.copies[name] = copy.deepcopy(transformer).requires_grad_(False)
            transformer.requires_grad_(True)
            params = list(transformer.parameters())
        self.parameters = params
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        wrapped, self.optimizer = self.accelerator.prepare(transformer, self.optimizer)
        self.model.transformer = wrapped
        self.transformer = self.accelerator.unwrap_model(wrapped)

    @contextlib.contextmanager
    def policy(self, which: str):
        """Run the block as policy ``which``: "current", "old", "ema" or "reference"."""
        if which == "current":
            yield
            return
        if self.config.lora_rank > 0:
            adapter = {"old": "old", "ema": "ema", "reference": None}[which]
            with active_adapter(self.transformer, adapter):
                yield
            return
        trained = self.model.transformer
        self.model.transformer = self.copies[which]
        try:
            yield
        finally:
            self.model.transformer = trained

    def evaluation_policy(self) -> str:
        return "ema" if self.config.ema_decay > 0 else "current"

    @torch.no_grad()
    def _blend(self, target: str, decay: float) -> None:
        if self.config.lora_rank > 0:
            blend_adapters(self.transformer, target=target, source="default", decay=decay)
            return
        for p_target, p_source in zip(self.copies[target].parameters(), self.transformer.parameters()):
            p_target.mul_(decay).add_(p_source.detach(), alpha=1 - decay)

    # --- model calls ------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        self.transformer_rows += x.shape[0]
        with self.accelerator.autocast():
            return self.model.velocity(x, t, cond)

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
        self.accelerator.backward(loss)

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
        """Samples ``samples`` of the global batch (their prompts given) with the old policy."""
        cfg = self.config
        shape = tuple(self.model.latent_shape)
        x1 = torch.stack([torch.randn(shape, generator=self.generator(epoch, "rollout", i)) for i in samples])
        x1 = x1.to(self.device)
        sigmas = timestep_grid(cfg.num_steps, device=self.device)
        with self.policy("old"):
            velocity = lambda x, t: self.guided_velocity(x, t, prompts)  # noqa: E731
            if cfg.sampler == "ode":
                return Rollout(prompts, ode_sample(velocity, x1, sigmas, method=cfg.ode_method), sigmas)
            # The SDE's step noise is drawn for the whole block, keyed by its first sample.
            trajectory = sde_sample(velocity, x1, sigmas, noise_level=cfg.noise_level, sde_type=cfg.sde_type,
                                    generator=self.generator(epoch, "sde", samples.start), backend=cfg.backend)
        return Rollout(prompts, trajectory.final, sigmas, trajectory)

    def rewards(self, rollout: Rollout) -> torch.Tensor:
        """Rewards of the whole global batch (gathered across processes, in global order)."""
        images = self.model.decode(rollout.final)
        scores, _ = self.task.reward_fn(images, rollout.prompts, None)
        local = torch.as_tensor(scores["avg"], dtype=torch.float64, device=self.device)
        return self.accelerator.gather(local).cpu()

    def advantages(self, prompts: list, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages of the global batch from its per-prompt group statistics."""
        self.tracker.clear()
        advantages = self.tracker.update(prompts, rewards.numpy(), type=TRACKER_TYPE[self.config.advantage_mode])
        return torch.as_tensor(advantages, dtype=torch.float32)

    def optimizer_step(self) -> bool:
        """Clip, check, step and update old / ema; returns False (and changes nothing) on non-finite grads."""
        cfg = self.config
        grads = [p.grad for p in self.parameters if p.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if finite:
            if cfg.grad_clip > 0:
                self.accelerator.clip_grad_norm_(self.parameters, cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            self._blend("old", min(cfg.old_decay_rate * self.step, cfg.old_decay_max))
            if cfg.ema_decay > 0:
                self._blend("ema", cfg.ema_decay)
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    def reduce_stats(self, stats: Dict[str, float]) -> Dict[str, float]:
        """Mean of each statistic over processes (max for ratio_max)."""
        if self.accelerator.num_processes == 1:
            return stats
        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        mean = self.accelerator.reduce(values.clone(), reduction="mean")
        peak = self.accelerator.reduce(values.clone(), reduction="max") if hasattr(self.accelerator, "reduce") else values
        return {k: float(peak[i] if k == "ratio_max" else mean[i]) for i, k in enumerate(keys)}

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
            final = ode_sample(velocity, x1.to(self.device), timestep_grid(num_steps, device=self.device))
        return self.model.decode(final)

    def evaluate(self) -> dict:
        if self.task.evaluate is None:
            return {}
        return self.task.evaluate(self.sample)

    # --- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.config
        start = time.perf_counter()
        if cfg.resume and load_state(self):
            before = self.output.summary_before
        else:
            before = self.evaluate()
            self.output.start(before, self.sample)
        clock = self.output.clock_offset
        progress = self.output.progress(cfg.epochs, initial=self.epoch)
        for epoch in range(self.epoch, cfg.epochs):
            timer = self.output.timer()
            prompts = self.sample_prompts(self.generator(epoch, "prompts"))
            samples = self.local_samples()
            local_prompts = prompts[samples.start:samples.stop]
            with timer("rollout"):
                rollout = self.rollout(local_prompts, epoch, samples)
            with timer("reward"):
                rewards = self.rewards(rollout)
            advantages = self.advantages(prompts, rewards)[samples.start:samples.stop]
            with timer("loss_backward"):
                draws = [self.generator(epoch, "draws", i) for i in samples]
                stats = self.reduce_stats(POLICY_STEPS[cfg.estimator](self, rollout, advantages, draws))
            with timer("optimizer"):
                stepped = self.optimizer_step()
            self.epoch = epoch + 1
            record = {"epoch": self.epoch, "step": self.step, "skipped": not stepped,
                      "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                      "zero_std_ratio": self.tracker.zero_std_ratio, "transformer_rows": self.total_transformer_rows(),
                      **stats, **timer.seconds}
            due = cfg.eval_every > 0 and self.epoch % cfg.eval_every == 0
            if due or self.epoch == cfg.epochs:
                record.update(self.output.eval_record(self.evaluate(), self.task.metric))
            record["seconds"] = clock + time.perf_counter() - start
            self.history.append(record)
            self.output.log(record, progress)
            reached = cfg.stop_at is not None and record.get(self.task.metric, 0.0) >= cfg.stop_at
            last = self.epoch == cfg.epochs or reached
            if last or (cfg.checkpoint_every > 0 and self.epoch % cfg.checkpoint_every == 0):
                self.output.checkpoint = save_state(self, before)
                self.accelerator.wait_for_everyone()
            if reached:
                break
        progress.close()
        return self.output.finish(self, before, clock + time.perf_counter() - start)
