"""Run under `accelerate launch`: the command line's training on a tiny run, with process 1 failing.

Usage: multiprocess_failure_job.py KIND OUTPUT_DIR
KIND: value_error (an op rejects its input), out_of_memory, non_finite (NonFiniteError on one
process only). Process 1 fails in epoch 1's update, while process 0 goes on into the
gradient all-reduce; the job exits with the command line's exit code.
"""

import sys

import torch

import elbo_kernels as ek
from elbo_kernels import cli
from elbo_kernels.train import policy_step
from elbo_kernels.train.trainer import NonFiniteError

kind, out = sys.argv[1], sys.argv[2]
real = policy_step.POLICY_STEPS["elbo"]


def failing_on_process_1(trainer, rollout, advantages, draws):
    if trainer.accelerator.process_index == 1:
        if kind == "value_error":  # a real op's input check
            empty = torch.zeros(len(advantages), 0)
            ek.elbo(empty, empty, empty, torch.full((len(advantages),), 0.5), backend="torch")
        if kind == "out_of_memory":  # the exception torch raises when an allocation fails
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if kind == "non_finite":
            raise NonFiniteError("epoch 1: the loss is nan (on_non_finite='raise')")
    return real(trainer, rollout, advantages, draws)


policy_step.POLICY_STEPS["elbo"] = failing_on_process_1
sys.exit(cli.main(["train", "--output_dir", out, "--epochs", "2", "--prompts_per_epoch", "4", "--group_size", "2",
                   "--draws_per_sample", "2", "--eval_every", "0", "--eval_seeds", "1", "--plots", "false",
                   "--tensorboard", "false", "--progress", "false", "--backend", "torch"]))
