"""torch.compile(fullgraph=True) of the public API, each run in a fresh process.

A fresh process is the point: the ops must get registered by compiling alone, with
no eager call of the library before (tests/compile_public_api_job.py has the checks:
values and gradients against the eager torch reference, and bad values still rejected).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("compile_public_api_job.py")

CASES = [("auto", "cpu"), ("torch", "cpu"), ("triton", "cpu")]
if torch.cuda.is_available():
    CASES += [("auto", "cuda"), ("cuda", "cuda"), ("triton", "cuda")]


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.slow
def test_public_api_compiles_fullgraph_in_a_fresh_process(backend, device):
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "1" if device == "cpu" else "0"
    proc = subprocess.run([sys.executable, str(JOB), backend, device], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-6000:]
