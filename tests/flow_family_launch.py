"""Run a FlowGRPO-family training script on CPU without editing it: environment adaptations only.

    torchrun --nproc_per_node 2 tests/flow_family_launch.py CHECKOUT SCRIPT LOG.jsonl --config=...

Used by tests/test_flow_family_scripts.py to run DiffusionNFT's and AWM's real scripts, unmodified
and patched as docs/diffusion_nft.md and docs/awm.md say, under the same adaptations:

- torch.distributed: the script's "nccl" becomes "gloo" (CPU), and all_reduce(AVG), which gloo
  lacks, is a SUM divided by the world size; torch.cuda.set_device is a no-op.
- the script module sees torch.device("cuda:N") as the CPU, and DDP without device_ids.
- accelerate runs on the CPU (ACCELERATE_USE_CPU); wandb is disabled and wandb.log writes the
  logged scalars to LOG.jsonl (one JSON object per call, with the process's rank).
"""
import importlib.util
import json
import os
import sys
import types

root, script, log = sys.argv[1:4]
sys.argv = [script] + sys.argv[4:]
os.chdir(root)
sys.path.insert(0, root)
os.environ["WANDB_MODE"] = "disabled"
os.environ["ACCELERATE_USE_CPU"] = "true"

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

_init, _all_reduce = dist.init_process_group, dist.all_reduce


def init_process_group(backend=None, *args, **kwargs):
    return _init("gloo", *args, **kwargs)


def all_reduce(tensor, op=dist.ReduceOp.SUM, *args, **kwargs):
    if op == dist.ReduceOp.AVG:
        work = _all_reduce(tensor, dist.ReduceOp.SUM, *args, **kwargs)
        tensor.div_(dist.get_world_size())
        return work
    return _all_reduce(tensor, op, *args, **kwargs)


dist.init_process_group, dist.all_reduce = init_process_group, all_reduce
torch.cuda.set_device = lambda *args, **kwargs: None

import wandb  # noqa: E402


def log_scalars(data, step=None, *args, **kwargs):
    row = {"_step": step, "_rank": int(os.environ.get("RANK", 0))}
    for key, value in data.items():
        try:
            row[key] = float(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    with open(log, "a") as handle:
        handle.write(json.dumps(row) + "\n")


_wandb_init = wandb.init


def init_then_log_scalars(*args, **kwargs):
    run = _wandb_init(*args, **kwargs)
    wandb.log = log_scalars  # wandb.init binds wandb.log to its run; take it back
    return run


wandb.log, wandb.init = log_scalars, init_then_log_scalars


class TorchOnCPU(types.ModuleType):
    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def device(spec, *args):
        return torch.device("cpu") if str(spec).startswith("cuda") else torch.device(spec, *args)


spec = importlib.util.spec_from_file_location("training_script", script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.torch = TorchOnCPU("torch")
if hasattr(module, "DDP"):
    module.DDP = lambda model, device_ids=None, output_device=None, **kwargs: DistributedDataParallel(model, **kwargs)

from absl import app  # noqa: E402

app.run(module.main)
