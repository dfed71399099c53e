"""The ``elbo-kernels`` command line: RL fine-tuning of flow models with fused ELBO kernels.

Importing this module imports neither torch nor the library's kernels: ``elbo-kernels --help``
answers at once, and each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception as exc:  # noqa: BLE001 - report, don't fail, in a diagnostic command
        return f"not importable ({type(exc).__name__})"


def info(_: argparse.Namespace) -> int:
    """Print versions, devices and which backends are built and usable (and why not)."""
    import torch

    import elbo_kernels as ek

    print(f"elbo_kernels {ek.__version__}")
    print(f"python       {platform.python_version()} ({sys.executable})")
    for module in ("torch", "triton", "diffusers", "peft", "accelerate", "transformers", "safetensors", "numpy"):
        print(f"{module:<12} {_version(module)}")
    print(f"torch.version.cuda {torch.version.cuda}; CUDA available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
    print(f"CPU threads  {torch.get_num_threads()}")
    print("backends:")
    statuses = ek.available_backends()
    for name, status in statuses.items():
        mark = "usable " if status else "missing"
        print(f"  {name:<7} {mark}  {status.reason}")
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        print(f"auto on {device}: {ek.backends.resolve_backend('auto', torch.device(device))}")
    return 0


def train(args: argparse.Namespace) -> int:
    """Fine-tune with the recommended recipe (or any configured method) and write the run's outputs."""
    from .train import Trainer
    from .train.config import config_from_args

    config = config_from_args(args)
    trainer = Trainer(config)
    summary = trainer.fit()
    if trainer.accelerator.is_main_process:
        print(f"summary: {config.output_dir}/summary.json; final checkpoint: {summary['final_checkpoint']}")
    return 0


DESCRIPTION = """Fused kernels and a trainer for RL fine-tuning of diffusion and flow models, built
around the ELBO likelihood estimator of arXiv 2602.04663."""

INFO_DESCRIPTION = """Print the versions of elbo_kernels and its dependencies, the devices, and which kernel
backends (torch, cpu, cuda, triton) are built and usable here, with the reason for any that is not. The
first call in a fresh environment builds the C++ kernels (about a minute); later calls load them."""

TRAIN_DESCRIPTION = """RL fine-tuning of a flow model. With no options it runs the study's recipe (pepg
objective, adaptive ELBO, 10-step ODE rollouts without CFG, LoRA, girsanov KL) on the embedded DigitEval
task on a CPU, with nothing to download, and writes metrics, plots, checkpoints and summary.json to
--output_dir. Every option is a TrainConfig key; --config FILE.yaml loads a file of them first, and
--reward package.module:attribute trains on your own reward."""


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="elbo-kernels", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{info,train}")
    commands.add_parser("info", help="versions, devices, and which kernel backends are usable here",
                        description=INFO_DESCRIPTION).set_defaults(func=info)
    train_parser = commands.add_parser(
        "train", help="RL fine-tuning (default: the study's recipe on the embedded DigitEval task)",
        description=TRAIN_DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if "train" in argv:  # its options come from TrainConfig, whose module imports torch
        from .train.config import add_arguments

        add_arguments(train_parser)
    train_parser.set_defaults(func=train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
