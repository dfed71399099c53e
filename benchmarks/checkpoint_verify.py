"""What checkpoint verification (sha256 of every file) costs when resuming an SD3.5-M-sized LoRA run.

    python benchmarks/checkpoint_verify.py [--repeats 5] [--workdir DIR]

Builds a synthetic checkpoint of the size the trainer writes for SD3.5-M with LoRA r=32 on the
attention projections (24 blocks x 8 projections of 1536 -> 1536, the last block without
to_add_out: 191 projections, 18.8M fp32 parameters): the shipped adapter plus "default", "old"
and "ema" as peft safetensors (75 MB each), AdamW state (exp_avg, exp_avg_sq: 150 MB), RNG and
trainer state -- written with the trainer's own write_checkpoint, so the COMPLETE marker is the
real one. Then, page cache warm (the case where hashing is the largest share, since nothing
waits on the disk), it times:

    verify   elbo_kernels._checksums.verify: every file's sha256 against the marker
    load     what load_state reads: 4 adapter files (safetensors), optimizer.pt and rng.pt
             (torch.load), trainer_state.json, and a copy of every tensor into preallocated
             parameters (what set_peft_model_state_dict / optimizer.load_state_dict do)

    base     loading the base transformer's weights: a synthetic bf16 safetensors file of SD3.5-M's
             transformer size (2.24B parameters, 4.5 GB; --base_params 0 skips it)

and prints the medians and verify as a percentage of the checkpoint part of a resume and of
a resume that also loads the transformer. A real SD3.5-M resume also loads the VAE and the
three text encoders (T5-XXL alone is 4.7B parameters) and builds the pipeline: not timed
here, so the second percentage is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from elbo_kernels._checksums import verify  # noqa: E402
from elbo_kernels._safe_load import load_checkpoint_file  # noqa: E402
from elbo_kernels.train.checkpoint import save_torch, write_checkpoint  # noqa: E402

BLOCKS, WIDTH, RANK = 24, 1536, 32
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
ADAPTERS = ("adapter_model.safetensors", "adapters/default/adapter_model.safetensors",
            "adapters/old/adapter_model.safetensors", "adapters/ema/adapter_model.safetensors")


def adapter_state(generator: torch.Generator) -> dict:
    state = {}
    for block in range(BLOCKS):
        for name in PROJECTIONS:
            if block == BLOCKS - 1 and name == "to_add_out":  # SD3.5's last block is context_pre_only
                continue
            prefix = f"base_model.model.transformer_blocks.{block}.attn.{name}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(RANK, WIDTH, generator=generator)
            state[f"{prefix}.lora_B.weight"] = torch.randn(WIDTH, RANK, generator=generator) * 1e-3
    return state


def build(root: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    adapter = adapter_state(generator)
    parameters = list(adapter.values())

    def write(tmp: Path) -> None:
        for name in ADAPTERS:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            save_file(adapter, str(tmp / name))
            (tmp / name).with_name("adapter_config.json").write_text(json.dumps({"r": RANK, "lora_alpha": 64}))
        state = {i: {"step": torch.tensor(100.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                 for i, p in enumerate(parameters)}
        save_torch({"state": state, "param_groups": [{"lr": 3e-4, "params": list(range(len(parameters)))}]},
                   tmp / "optimizer.pt")
        save_torch({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"epoch": 1, "history": []}))

    return write_checkpoint(root, 1, write, keep=1)


def write_base(path: Path, params: int, tensors: int = 64) -> None:
    """A bf16 safetensors file of ``params`` parameters, streamed to disk (never whole in memory)."""
    per = params // tensors
    header = {f"transformer.{i}.weight": {"dtype": "BF16", "shape": [per], "data_offsets": [2 * per * i,
                                                                                          2 * per * (i + 1)]}
              for i in range(tensors)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    chunk = os.urandom(64 << 20)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        left = 2 * per * tensors
        while left:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))


def load(path: Path, targets: dict) -> None:
    for name in ADAPTERS:
        for key, value in load_file(str(path / name)).items():
            targets[key].copy_(value)
    optimizer = load_checkpoint_file(path / "optimizer.pt")
    for values in optimizer["state"].values():
        for value in values.values():
            value.clone()
    load_checkpoint_file(path / "rng.pt")
    json.loads((path / "trainer_state.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="where the synthetic checkpoint goes (default: a temp dir)")
    parser.add_argument("--base_params", type=float, default=2.24e9, help="base transformer parameters (0: skip)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ckpt-verify-", dir=args.workdir) as tmp:
        start = time.perf_counter()
        path = build(Path(tmp) / "checkpoints")
        written = time.perf_counter() - start
        files = [p for p in path.rglob("*") if p.is_file()]
        total = sum(p.stat().st_size for p in files)
        params = sum(v.numel() for v in load_file(str(path / ADAPTERS[0])).values())
        targets = {k: torch.empty_like(v) for k, v in load_file(str(path / ADAPTERS[0])).items()}
        load(path, targets)  # warm the page cache
        verify_s, load_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            assert verify(path) is True
            t1 = time.perf_counter()
            load(path, targets)
            t2 = time.perf_counter()
            verify_s.append(t1 - t0)
            load_s.append(t2 - t1)
        base_s = []
        if args.base_params > 0:
            base = Path(tmp) / "transformer.safetensors"
            write_base(base, int(args.base_params))
            for _ in range(max(2, args.repeats // 2) + 1):
                t0 = time.perf_counter()
                # load_file maps the file lazily: copying each tensor (as loading into a model does) reads it.
                for value in load_file(str(base)).values():
                    value.clone()
                base_s.append(time.perf_counter() - t0)
            base_s = base_s[1:]  # the first read warms the page cache
    v, l = statistics.median(verify_s), statistics.median(load_s)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print(f"checkpoint: {len(files)} files, {total / 1e6:.0f} MB; adapter {params / 1e6:.2f}M fp32 parameters; "
          f"written (with hashing) in {written:.2f} s")
    print(f"median of {args.repeats}, page cache warm: verify {v:.3f} s ({total / v / 1e9:.2f} GB/s), "
          f"load {l:.3f} s")
    print(f"verify = {100 * v / (v + l):.0f}% of the checkpoint part of a resume (verify + load); "
          f"{100 * v / l:.0f}% on top of loading alone")
    if base_s:
        b = statistics.median(base_s)
        print(f"base transformer weights ({args.base_params / 1e9:.2f}B bf16): load {b:.3f} s; verify = "
              f"{100 * v / (v + l + b):.1f}% of verify + checkpoint load + transformer load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
