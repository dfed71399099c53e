"""Run under a launcher (``accelerate launch``, ``torchrun``): the command line's ``train``.

Usage: cli_job.py TRAIN_ARGS...   (as ``elbo-kernels train TRAIN_ARGS...``)

Under ``torchrun --max-restarts N`` the faults of $ELBO_KERNELS_FAULT apply to the first attempt
only: a restarted group must not meet them again.
"""

import os
import sys

if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
    os.environ.pop("ELBO_KERNELS_FAULT", None)

from elbo_kernels import cli  # noqa: E402

sys.exit(cli.main(["train", *sys.argv[1:]]))
