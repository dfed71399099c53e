"""Run under ``torchrun --max-restarts N``: the command line's ``train``, with the faults of
$ELBO_KERNELS_FAULT only in the first attempt (a restarted group must not meet them again).

Usage: elastic_job.py TRAIN_ARGS...   (as ``elbo-kernels train TRAIN_ARGS...``)
"""

import os
import sys

if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
    os.environ.pop("ELBO_KERNELS_FAULT", None)

from elbo_kernels import cli  # noqa: E402

sys.exit(cli.main(["train", *sys.argv[1:]]))
