"""The ``elbo-kernels`` command line: RL fine-tuning of flow models with fused ELBO kernels.

Importing this module imports neither torch nor the library's kernels: ``elbo-kernels --help``
answers at once, and each subcommand imports what it needs.

An error the user can act on (a bad flag or value, a missing file, an unwritable or full
disk, a resume that does not match, a failed reward, non-finite values, missing model
weights) is one line on stderr and an exit code per class (elbo_kernels/train/errors.py);
``--debug`` or ELBO_KERNELS_DEBUG=1 shows the traceback. Anything else is a bug: the
traceback, and a request to report it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
import warnings
from typing import List, Optional

from ._argparse import Parser

DEBUG_ENV = "ELBO_KERNELS_DEBUG"


def _version(distribution: str) -> str:
    """The installed version, read from the package metadata: importing diffusers, peft and
    transformers only to print their versions took 4 of info's 6.4 s."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def package_version() -> str:
    from . import __version__

    return __version__


def info(_: argparse.Namespace) -> int:
    """Print versions, devices and which backends are built and usable (and why not)."""
    import torch

    import elbo_kernels as ek

    print(f"elbo_kernels {package_version()}")
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
    from .train.errors import set_command_line

    set_command_line(True)  # messages name --flags, not Python arguments (until this command returns)
    try:
        config = config_from_args(args)
        trainer = Trainer(config)
        args.trainer = trainer  # for the error handler: another process's failure explains this one's
        summary = trainer.fit()
    finally:
        set_command_line(False)
    if trainer.accelerator.is_main_process:
        print(f"summary: {trainer.config.output_dir}/summary.json; final checkpoint: {summary['final_checkpoint']}")
    return 0


DESCRIPTION = """Fused kernels and a trainer for RL fine-tuning of diffusion and flow models, built
around the ELBO likelihood estimator of arXiv 2602.04663."""

INFO_DESCRIPTION = """Print the versions of elbo_kernels and its dependencies, the devices, and which kernel
backends (torch, cpu, cuda, triton) are built and usable here, with the reason for any that is not. The
first call in a fresh environment builds the C++ kernels (about a minute); later calls load them."""

TRAIN_DESCRIPTION = """RL fine-tuning of a flow model. With no options it runs the study's recipe (pepg
objective, adaptive ELBO, 10-step ODE rollouts without CFG, LoRA, girsanov KL) on the embedded DigitEval
task on a CPU, with nothing to download, and writes metrics, plots, checkpoints and summary.json to
--output_dir (by default outputs/TASK, a new outputs/TASK-N for each further run). Every option is a
TrainConfig key (--output_dir or --output-dir); --config FILE.yaml loads a file of them first, and
--reward package.module:attribute trains on your own reward (a module in the current directory works).
A boolean flag alone means true (--resume); it also takes a value (--plots false)."""


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The parser, with the conventions of elbo_kernels/_argparse.py (no abbreviations, dashes or
    underscores, "did you mean" from the subcommand that was meant).

    The train options come from TrainConfig, whose module imports torch: they are added only when
    ``argv`` names the train subcommand (or is None), so ``elbo-kernels --help`` answers at once.
    """
    parser = Parser(prog="elbo-kernels", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"elbo-kernels {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="{info,train}")
    info_parser = commands.add_parser("info", help="versions, devices, and which kernel backends are usable here",
                                      description=INFO_DESCRIPTION)
    info_parser.set_defaults(func=info, _parser=info_parser)
    train_parser = commands.add_parser(
        "train", help="RL fine-tuning (default: the study's recipe on the embedded DigitEval task)",
        description=TRAIN_DESCRIPTION, usage="%(prog)s [-h] [--config FILE.yaml] [--KEY VALUE ...]",
    )
    if argv is None or "train" in argv:
        from .train.config import add_arguments

        add_arguments(train_parser)
    train_parser.add_argument("--debug", action="store_true", default=False,
                              help=f"show the full traceback of any error (or set {DEBUG_ENV}=1)")
    train_parser.set_defaults(func=train, _parser=train_parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # bare `elbo-kernels`: what it can do, not an error
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warning
        try:
            return args.func(args)
        except Exception as error:  # noqa: BLE001 - every error is classified, reported, and given its exit code
            return _report(error, getattr(args, "trainer", None), debug)
        except KeyboardInterrupt as error:
            return _report(error, getattr(args, "trainer", None), debug)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from .train.errors import RunWarning

    if issubclass(category, RunWarning):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def _report(error: BaseException, trainer, debug: bool) -> int:
    """Print the error (one line, or a traceback for a bug or with --debug) and return its exit code."""
    from .train.errors import EXIT_BUG, EXIT_PREEMPTED, classify

    code, message = classify(error)
    failures = getattr(trainer, "failures", None)
    earlier = failures.failure() if failures is not None else None
    if earlier is not None:
        # This process's error (typically gloo's "Connection closed by peer") is a consequence.
        code = int(earlier.get("exit_code") or EXIT_BUG)
        message = f"process {earlier['process']} failed: {earlier['error']}"
    if debug or message is None:
        traceback.print_exception(error)
    if message is None:
        print(f"error: an unexpected {type(error).__name__} (above) -- a bug in elbo_kernels; please report it "
              f"to the maintainers with this output and that of `elbo-kernels info`", file=sys.stderr)
    elif getattr(error, "exit_code", None) == EXIT_PREEMPTED:  # a planned stop, said once (by the main process)
        if trainer is None or trainer.accelerator.is_main_process:
            print(message, file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    if failures is not None and failures.store is not None:
        # Give the other processes' watchers (polling every 0.2 s) time to print the cause before the
        # launcher tears them down, then exit without waiting on collectives or worker threads.
        time.sleep(1.0)
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
