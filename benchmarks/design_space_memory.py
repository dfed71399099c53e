"""Memory kept between rollout and loss, and one training step's allocation peak, per method
(benchmarks/design_space.py writes it into design_space.json unless --no_memory)."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Dict


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


