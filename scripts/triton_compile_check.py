"""Ahead-of-time compile check of every Triton kernel for sm_80 and sm_90, with no GPU.

Runs the real launchers of elbo_kernels/ops/_triton/ on meta tensors, with a
stand-in Triton driver that reports a CUDA target of the chosen compute
capability, and compiles instead of launching: every kernel, every autotune
config, every dtype (float32, bfloat16, float16, float64) and every flag
combination the launchers can produce, plus SD3-sized launches (N*D > 2^31
elements, seeds and offsets > 2^62). Triton's own ptxas compiles each PTX for
the target, so this catches what only a GPU would otherwise show: compile
errors, register spills, and FMA contraction where a kernel is meant to be
exact.

Fails (exit 1) on
  - a compile error;
  - register spills in a float32 / bfloat16 / float16 variant (float64 spills
    are reported, not fatal: float64 is a testing dtype, not a training one).
    Kernels that call tl.randn may show up to 32 bytes: libdevice's cosf keeps
    a 28-byte local array for its argument reduction of huge arguments, a path
    Box-Muller's theta in [0, 2 pi) never takes, and ptxas counts that array's
    traffic as spills at any register count (measured: 8 bytes on sm_90 and
    24-32 bytes on sm_80 at 40-48 registers, triton 3.9);
  - a fused multiply-add (fma.rn) in the PTX of a kernel compiled with
    enable_fp_fusion=False that does not call tl.randn (libdevice's log / cos
    inside tl.randn use explicit FMAs, which no flag removes).

Each architecture is compiled in its own process (--jobs of them at a time)
with a fresh Triton cache, so every variant really runs ptxas.

Usage:
  python scripts/triton_compile_check.py [--arch 80 90] [--jobs 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")
SPILLS_ALLOWED = {"float64"}
RANDN_LOCAL_BYTES = 32  # libdevice cosf's local array (module docstring)
SD3_ROWS, SD3_LATENT = 10368, (16, 128, 128)  # 10368 * 262144 elements > 2^31
BIG_SEED, BIG_OFFSET = 2**62 + 12345, 2**62 + 7


# ---------------------------------------------------------------- child: one architecture


class _StandInDriver:
    """The parts of Triton's CUDA driver that compiling needs, for a GPU that is not there."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=0):
        return divmod(self.target.arch, 10)

    def get_active_torch_device(self):
        import torch

        return torch.device("meta")

    def map_python_to_cpp_type(self, ty):
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)

    def get_benchmarker(self):
        raise RuntimeError("the compile check never benchmarks")


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _install_compile_hooks(records: list, current: dict) -> None:
    """Make every launch compile (warmup) instead of run, and every autotuner compile all its configs."""
    from triton import knobs
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    knobs.nvidia.dump_ptxas_log = True  # ptxas -v output, printed by the compiler
    original_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        log = io.StringIO()
        started = time.perf_counter()
        error = None
        kernel = None
        try:
            with contextlib.redirect_stdout(log):
                kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as exc:  # noqa: BLE001  (a compile error is a result here)
            error = f"{type(exc).__name__}: {exc}"
        text = log.getvalue()
        regs = [int(m) for m in _PTXAS_REGS.findall(text)]
        spills = [int(a) + int(b) for a, b in _PTXAS_SPILLS.findall(text)]
        ptx = kernel.asm.get("ptx", "") if kernel is not None else ""
        records.append(dict(
            kernel=self.__name__,
            case=current["case"],
            dtype=current["dtype"],
            randn=current["randn"],
            config={k: kwargs[k] for k in sorted(kwargs) if k.isupper() and k != "ACC"},
            num_warps=kwargs.get("num_warps", 4),
            fp_fusion=kwargs.get("enable_fp_fusion"),
            hash=getattr(kernel, "hash", None),
            compiled=bool(text.strip()) or error is not None,
            seconds=round(time.perf_counter() - started, 3),
            registers=max(regs) if regs else None,
            spill_bytes=max(spills) if spills else 0,
            fma=bool(re.search(r"\bfma\.rn\.f(32|64)\b", ptx)),
            error=error,
        ))
        return kernel

    def every_config(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        for config in self.prune_configs(kwargs):
            self.fn.run(*args, **kwargs, **config.all_kwargs())
        self.nargs = None

    JITFunction.run = compile_only
    Autotuner.run = every_config


def _launch_everything(current: dict) -> None:
    """Calls each launcher for every dtype and flag combination it can produce."""
    import torch

    from elbo_kernels.ops._base import accumulation_dtype
    from elbo_kernels.ops._triton import _common
    from elbo_kernels.ops._triton import noise as tri_noise
    from elbo_kernels.ops._triton import noising as tri_noising
    from elbo_kernels.ops._triton import residual_sums as tri_sums
    from elbo_kernels.ops._triton import sde_step as tri_sde

    # Meta tensors are not CUDA tensors; the device rule is not what is checked here.
    _common.check_device = lambda op, *tensors: None

    def meta(shape, dtype):
        return torch.empty(shape, dtype=dtype, device="meta")

    presences = {  # name: (v_old, v_ref, nft_beta)
        "v": (False, False, 0.0), "old": (True, False, 0.0), "ref": (False, True, 0.0),
        "old_ref": (True, True, 0.0), "old_nft": (True, False, 0.5), "old_ref_nft": (True, True, 0.5),
    }

    def every_launch(n, b, latent, dtypes, seed, offset, tag, only=None):
        draws_per_sample = n // b
        for name in dtypes:
            dtype = getattr(torch, name)
            acc = accumulation_dtype(dtype)
            shape = (n,) + latent
            current["dtype"] = name
            for seeded in (False, True):
                noise = None if seeded else meta(shape, dtype)
                current["randn"] = seeded
                for pname, (old, ref, beta) in presences.items():
                    if only and pname not in only:
                        continue
                    current["case"] = f"{tag} residual_sums noise={'seed' if seeded else 'tensor'} {pname}"
                    args = (meta(shape, dtype), meta((b,) + latent, dtype), noise,
                            meta(shape, dtype) if old else None, meta(shape, dtype) if ref else None, beta)
                    tri_sums.residual_sums_forward(*args, seed, offset)
                    tri_sums.residual_sums_backward(meta((n, tri_sums.NUM_SUMS), acc), *args, seed, offset)
                current["case"] = f"{tag} noising noise={'seed' if seeded else 'tensor'}"
                tri_noising.noising_forward(meta((b,) + latent, dtype), meta((n,), acc), noise, draws_per_sample, seed, offset)
            current["randn"] = True
            current["case"] = f"{tag} generate_noise"
            tri_noise.generate_noise_forward(meta(shape, dtype), seed, offset)
            current["randn"] = False
            current["case"] = f"{tag} sde_step"
            sde = (meta(shape, dtype), meta(shape, dtype), meta(shape, dtype), meta((n, 4), acc))
            tri_sde.sde_step_forward(*sde)
            for with_mean in (False, True):
                current["case"] = f"{tag} sde_step grad_mean={with_mean}"
                tri_sde.sde_step_backward(meta((n,), acc), meta(shape, acc) if with_mean else None, *sde)

    every_launch(24, 8, (16, 64, 64), DTYPE_NAMES, 3, 5, "latents")
    # SD3 at 1024 px with 10368 draws: int64 element counts, Philox counters past 2^62.
    # The flags of the recipe (girsanov KL: v_ref; ratios: v_old; nft) are enough there.
    every_launch(SD3_ROWS, SD3_ROWS // 9, SD3_LATENT, ("float32", "bfloat16"), BIG_SEED, BIG_OFFSET, "sd3",
                 only=("old_ref", "old_ref_nft"))


def _child(capability: int) -> None:
    os.environ["TRITON_INTERPRET"] = "0"
    sys.path.insert(0, str(ROOT))
    from triton.runtime import driver

    driver.set_active(_StandInDriver(capability))
    records, current = [], {"case": "", "dtype": "", "randn": False}
    _install_compile_hooks(records, current)
    _launch_everything(current)
    json.dump(records, sys.stdout)


# ---------------------------------------------------------------- parent: run, judge, report


def _run_arches(arches, jobs):
    results, pending = {}, list(arches)
    running = {}
    while pending or running:
        while pending and len(running) < jobs:
            arch = pending.pop(0)
            env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix=f"triton-aot-sm{arch}-"),
                       TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
            running[arch] = (subprocess.Popen([sys.executable, __file__, "--child", str(arch)], env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                             time.perf_counter())
        arch = next(iter(running))
        proc, started = running.pop(arch)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"compile check for sm_{arch} crashed (exit {proc.returncode}):\n{err[-4000:]}")
        results[arch] = (json.loads(out), time.perf_counter() - started)
    return results


def _judge(arch, records):
    problems = []
    for r in records:
        what = f"sm_{arch} {r['kernel']} [{r['case']}, {r['dtype']}, {r['config']}, warps {r['num_warps']}]"
        if r["error"]:
            problems.append(f"{what}: compile error: {r['error'][:2000]}")
        elif r["spill_bytes"] > (RANDN_LOCAL_BYTES if r["randn"] else 0) and r["dtype"] not in SPILLS_ALLOWED:
            problems.append(f"{what}: {r['spill_bytes']} bytes of register spills ({r['registers']} registers)")
        elif r["fp_fusion"] is False and not r["randn"] and r["fma"]:
            problems.append(f"{what}: fma.rn in the PTX although enable_fp_fusion=False")
        elif r["fp_fusion"] is None:
            problems.append(f"{what}: launched without an explicit enable_fp_fusion")
    return problems


def _summary(arch, records, seconds):
    import triton

    compiled = [r for r in records if r["compiled"]]
    lines = [f"sm_{arch}, triton {triton.__version__}: {len(compiled)} variants compiled in {seconds:.0f} s "
             f"({len(records) - len(compiled)} launches reused an already compiled variant)"]
    table = defaultdict(lambda: [0, 0, 0])
    for r in compiled:
        row = table[(r["kernel"], r["dtype"])]
        row[0] += 1
        row[1] = max(row[1], r["registers"] or 0)
        row[2] = max(row[2], r["spill_bytes"])
    for (kernel, dtype), (count, regs, spill) in sorted(table.items()):
        lines.append(f"  {kernel:28s} {dtype:9s} variants {count:3d}  max registers {regs:3d}  max spill {spill} B")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (80 90)")
    parser.add_argument("--jobs", type=int, default=2, help="architectures compiled at once")
    parser.add_argument("--json", type=Path, default=None, help="write every variant's record here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child)
        return 0
    started = time.perf_counter()
    results = _run_arches(args.arch, max(1, args.jobs))
    problems = []
    for arch in args.arch:
        records, seconds = results[arch]
        print(_summary(arch, records, seconds))
        problems += _judge(arch, records)
    if args.json:
        args.json.write_text(json.dumps({f"sm_{a}": results[a][0] for a in args.arch}, indent=1))
    print(f"total {time.perf_counter() - started:.0f} s")
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print("no compile errors, no spills outside float64, no FMA in the exact kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
