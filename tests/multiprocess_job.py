"""Run under `accelerate launch`: a short training job, plus each process's rollout latents.

Usage: multiprocess_job.py OUTPUT_DIR   (writes OUTPUT_DIR/rank<R>_latents.pt and the run's outputs)
"""

import sys
from pathlib import Path

import torch

from elbo_kernels.train import TrainConfig, Trainer

out = Path(sys.argv[1])
config = TrainConfig(
    output_dir=str(out), epochs=2, prompts_per_epoch=4, group_size=2, draws_per_sample=2, eval_every=0,
    eval_seeds=1, plots=False, tensorboard=False, progress=False, backend="torch", lr=0.01,
)
trainer = Trainer(config)
prompts = trainer.sample_prompts(trainer.generator(0, "prompts"))
samples = trainer.local_samples()
rollout = trainer.rollout(prompts[samples.start:samples.stop], 0, samples)
torch.save({"samples": list(samples), "final": rollout.final},
           out.parent / f"{out.name}_rank{trainer.accelerator.process_index}_latents.pt")
trainer.fit()
