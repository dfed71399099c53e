"""Run directly (one process) or under `accelerate launch --config_file configs/accelerate/fsdp.yaml`.

Usage: fsdp_job.py OUTPUT_DIR LORA_RANK EPOCHS   (resumes from OUTPUT_DIR's last checkpoint if there is one)
"""

import sys

from elbo_kernels.train import TrainConfig, Trainer

out, lora_rank, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = TrainConfig(
    output_dir=out, epochs=epochs, prompts_per_epoch=4, group_size=2, draws_per_sample=2, eval_every=0,
    eval_seeds=1, plots=False, tensorboard=False, progress=False, backend="torch", lr=0.01 if lora_rank else 1e-3,
    lora_rank=lora_rank, checkpoint_every=1, keep_checkpoints=3, resume=True, num_threads=1,
)
trainer = Trainer(config)
assert trainer.sharded == (trainer.accelerator.num_processes > 1), "the FSDP launch did not shard"
trainer.fit()
