"""Kernel microbenchmarks: fused backends against the eager PyTorch composition and torch.compile of it.

For each op (forward + backward where the op has a gradient) and shape, times

    eager      the library's "torch" backend: the vectorised composition a user writes today
    compiled   torch.compile of that same eager function
    fused      each fused backend usable for the device ("cpu" on CPU; "triton", "cuda" on GPUs)

and reports the median time, achieved GB/s from the bytes the op must move (its
bandwidth floor), the machine's measured copy bandwidth, the ratio to the
floor, and peak memory.

What each variant pays is what a training loop pays, nothing more: the eager and
fused variants run inside ``ek.async_value_checks()`` (their NaN/range checks are
device-side asserts, as in a compiled graph, instead of a host sync per check);
the compiled variant is compiled for static shapes, afresh for each shape (no
dynamic-shape recompiles, no cache limit reached across sizes), warmed up, and
timed last. On a GPU the default sizes are N = 64 and 432 of [N, 16, 64, 64]
(16 MiB per fp32 tensor at 64): a row whose traffic fits in the L2 cache is
marked ``fits_in_l2``, since its GB/s is not comparable with the copy bandwidth.
The JSON is rewritten after every row, so a run stopped early (Ctrl-C, SIGINT
from a time limit) keeps what it measured. Writes kernels_<device>.json with a PNG plot and a markdown
table to outputs/bench/ (not tracked by git); --save writes them to the committed
benchmarks/results/ instead, for a run meant to replace the published numbers.

    python benchmarks/bench_kernels.py                 # full sweep
    python benchmarks/bench_kernels.py --quick         # one shape, few repeats
    python benchmarks/bench_kernels.py --save          # full sweep, into benchmarks/results/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT.parent))  # the checkout's package, also when nothing is installed (the device check)

import elbo_kernels as ek  # noqa: E402
from memory import peak_bytes  # noqa: E402

LATENT = (16, 64, 64)  # SD3.5-M latents at 512 px


# --- the ops, as functions of (backend) -> callable running forward + backward ----------------------
def make_inputs(n: int, dtype: torch.dtype, device: str) -> Dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (n,) + LATENT

    def randn():
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype)

    x0, eps = randn(), randn()
    v = (eps - x0 + 0.3 * randn()).requires_grad_()
    return {
        "v": v,
        "v_old": (v.detach() + 0.01 * randn()),
        "v_ref": (v.detach() + 0.02 * randn()),
        "x0": x0,
        "eps": eps,
        "t": torch.rand(n, generator=g).to(device) * 0.9 + 0.05,
        "adv": torch.randn(n, generator=g).to(device),
        "x_prev": randn(),
    }


def policy_loss_fn(inp, backend):
    def run():
        loss, _ = ek.policy_loss(inp["v"], inp["v_old"], inp["v_ref"], inp["x0"], inp["eps"], inp["t"], inp["adv"],
                                 objective="pepg", weighting="adaptive", kl="girsanov", backend=backend)
        return loss

    return run


def elbo_fn(inp, backend):
    def run():
        return ek.elbo(inp["v"], inp["x0"], inp["eps"], inp["t"], weighting="adaptive", backend=backend).sum()

    return run


def sde_step_fn(inp, backend):
    sigma = torch.full_like(inp["t"], 0.6)

    def run():
        log_prob, _, _ = ek.sde_step_log_prob(inp["v"], inp["x0"], inp["x_prev"], sigma, sigma - 0.1, backend=backend)
        return log_prob.sum()

    return run


# Bytes each op must move (E = element size, M = N * D elements per big tensor):
#   policy_loss fwd reads v, v_old, v_ref, eps, x0 (5 M E); bwd reads v, v_ref, eps, x0, writes dv (5 M E)
#   elbo        fwd reads v, eps, x0 (3 M E);             bwd reads v, eps, x0, writes dv (4 M E)
#   sde_step    fwd reads v, x, x_prev, writes prev_mean (3 M E + 4 M); bwd reads v, x, x_prev, writes dv (4 M E)
OPS = {
    "policy_loss": (policy_loss_fn, lambda m, e: 10 * m * e),
    "elbo": (elbo_fn, lambda m, e: 7 * m * e),
    "sde_step": (sde_step_fn, lambda m, e: 7 * m * e + 4 * m),
}


def forward_backward(run: Callable, v: torch.Tensor) -> Callable:
    """Forward + backward returning dL/dv (no .grad accumulation, so repeated calls are alike)."""

    def step():
        return torch.autograd.grad(run(), v)[0]

    return step


def median_seconds(fn: Callable, repeats: int, device: str) -> float:
    fn()  # warm-up (and compilation)
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int = 1 << 28, repeats: int = 10) -> float:
    """Bytes per second of dst.copy_(src) (read + write counted), the machine's practical ceiling."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), repeats, device)
    return 2 * nbytes / seconds


def variants(device: str) -> List[str]:
    """eager, the usable fused backends, then compiled (timed last: its compile workers and
    caches must not sit beside the other variants' timings)."""
    names = ["eager"]
    usable = ek.available_backends()
    for backend in (("cpu",) if device == "cpu" else ("triton", "cuda")):
        if usable[backend]:
            names.append(backend)
    return names + ["compiled"]


def run_variant(op: str, variant: str, inp: dict, device: str, repeats: int) -> dict:
    make, _ = OPS[op]
    if variant == "compiled":
        torch._dynamo.reset()  # a fresh static-shape compile per shape (no recompile limit, no dynamic shapes)
        run = torch.compile(make(inp, "torch"), dynamic=False)
        checks = contextlib.nullcontext()
    else:
        run = make(inp, "torch" if variant == "eager" else variant)
        checks = ek.async_value_checks()
    step = forward_backward(run, inp["v"])
    with checks:
        seconds = median_seconds(step, repeats, device)
        return {"seconds": seconds, "peak_bytes": peak_bytes(step, device)}


def l2_bytes(device: str) -> int:
    """The GPU's L2 cache size (0 on CPU, where the benchmark does not mark cache-resident rows)."""
    if device != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0))


def write_json(path: Path, result: dict) -> None:
    """Atomic rewrite: a reader (or a run killed mid-write) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="one shape, fp32, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/kernels_<device>.json)")
    parser.add_argument("--save", action="store_true",
                        help="write to the committed benchmarks/results/ (replacing the published results)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="batch sizes N (default: 8 16 32 64 on CPU, 64 432 on a GPU)")
    parser.add_argument("--ops", nargs="+", default=None, choices=list(OPS), help="only these ops (default: all)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only these of eager, compiled and the fused backends (default: all usable)")
    args = parser.parse_args(argv)
    device = args.device
    sizes = args.sizes or ([32] if args.quick else [8, 16, 32, 64] if device == "cpu" else [64, 432])
    dtypes = [getattr(torch, d) for d in args.dtypes] if args.dtypes else (
        [torch.float32] if args.quick else [torch.float32, torch.bfloat16])
    repeats = args.repeats or (3 if args.quick else 7)
    bandwidth = copy_bandwidth(device)
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} threads"
    l2 = l2_bytes(device)
    print(f"device {device} ({machine}); copy bandwidth {bandwidth / 1e9:.1f} GB/s"
          + (f"; L2 {l2 / 2**20:.0f} MiB" if l2 else ""))
    rows: List[dict] = []
    result = {
        "device": device, "machine": machine, "torch": torch.__version__, "copy_bandwidth_gbps": bandwidth / 1e9,
        "l2_bytes": l2, "latent": list(LATENT), "repeats": repeats, "complete": False, "rows": rows,
    }
    out = output_path(args, device)
    try:
        # Sizes outermost, in the order given: a run stopped by a time limit has every op at the first size.
        for n in sizes:
            for dtype in dtypes:
                for op in args.ops or list(OPS):
                    rows.extend(measure(op, dtype, n, device, repeats, bandwidth, l2, args.variants))
                    write_json(out, result)
    except KeyboardInterrupt:  # a time limit's SIGINT: keep the rows measured so far
        print(f"interrupted: {len(rows)} rows measured; {out} keeps them", file=sys.stderr, flush=True)
        write_json(out, result)
        raise SystemExit(130)
    result["complete"] = True
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(table(result))
    print(table(result))
    print(f"wrote {out} and its .png and .md")
    return result


def measure(op, dtype, n, device, repeats, bandwidth, l2, only) -> List[dict]:
    """One (op, dtype, N): every variant, with the speedup over eager filled in."""
    inp = make_inputs(n, dtype, device)
    m = n * LATENT[0] * LATENT[1] * LATENT[2]
    floor_bytes = OPS[op][1](m, inp["v"].element_size())
    rows = []
    for variant in [v for v in variants(device) if not only or v in only]:
        result = run_variant(op, variant, inp, device, repeats)
        row = {
            "op": op, "dtype": str(dtype).removeprefix("torch."), "shape": [n, *LATENT],
            "variant": variant, **result, "bytes": floor_bytes,
            "gbps": floor_bytes / result["seconds"] / 1e9,
            "x_floor": result["seconds"] / (floor_bytes / bandwidth),
            "fits_in_l2": bool(l2) and floor_bytes <= l2,
        }
        rows.append(row)
        print(f"{op:<12} {row['dtype']:<9} N={n:<3} {variant:<9} {result['seconds'] * 1e3:9.2f} ms "
              f"{row['gbps']:7.1f} GB/s  {row['x_floor']:6.2f}x floor  "
              f"peak {result['peak_bytes'] / 2**20:8.1f} MiB" + ("  (fits in L2)" if row["fits_in_l2"] else ""),
              flush=True)
    eager = next((r for r in rows if r["variant"] == "eager"), None)
    for row in rows:
        row["speedup_vs_eager"] = eager["seconds"] / row["seconds"] if eager else None
    return rows


def output_path(args: argparse.Namespace, device: str) -> Path:
    """--out if given; the committed benchmarks/results/ only with --save; else outputs/bench/ (untracked)."""
    if args.out:
        return Path(args.out)
    name = f"kernels_{device}{'_quick' if args.quick else ''}.json"
    return (ROOT / "results" if args.save else ROOT.parent / "outputs" / "bench") / name


def table(result: dict) -> str:
    """Markdown: one row per (op, dtype, N), one column group per variant."""
    rows = result["rows"]
    names = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [
        f"Forward + backward, latents {'x'.join(map(str, result['latent']))}; {result['device']} "
        f"({result['machine']}), torch {result['torch']}; copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s; "
        f"median of {result['repeats']}.",
        "",
        "| op | dtype | N | " + " | ".join(f"{n} ms" for n in names) + " | fused vs eager | fused x floor | "
        + " | ".join(f"{n} peak MiB" for n in names) + " |",
        "|" + "---|" * (3 + 2 * len(names) + 2),
    ]
    fused = [n for n in names if n not in ("eager", "compiled")]
    keys = dict.fromkeys((r["op"], r["dtype"], r["shape"][0]) for r in rows)
    op_order = {op: i for i, op in enumerate(OPS)}
    for key in sorted(keys, key=lambda k: (op_order.get(k[0], 99), k[1], k[2])):
        sel = {r["variant"]: r for r in rows if (r["op"], r["dtype"], r["shape"][0]) == key}
        best = min((sel[n] for n in fused), key=lambda r: r["seconds"], default=None)
        speed = f"{best['speedup_vs_eager']:.1f}x" if best and best["speedup_vs_eager"] else "-"
        floor = f"{best['x_floor']:.2f}" if best else "-"
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(f"{sel[n]['seconds'] * 1e3:.2f}" for n in names)
            + f" | {speed} | {floor} | " + " | ".join(f"{sel[n]['peak_bytes'] / 2**20:.0f}" for n in names) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(len(dtypes), len(ops), figsize=(4.5 * len(ops), 3.5 * len(dtypes)), squeeze=False)
    for i, dtype in enumerate(dtypes):
        for j, op in enumerate(ops):
            ax = axes[i, j]
            for variant in dict.fromkeys(r["variant"] for r in rows):
                sel = sorted((r for r in rows if (r["op"], r["dtype"], r["variant"]) == (op, dtype, variant)),
                             key=lambda r: r["shape"][0])
                ax.plot([r["shape"][0] for r in sel], [r["gbps"] for r in sel], "o-", label=variant)
            ax.axhline(result["copy_bandwidth_gbps"], color="grey", ls=":", label="copy bandwidth")
            ax.set_title(f"{op} fwd+bwd, {dtype}")
            ax.set_xticks(sorted({r["shape"][0] for r in rows}))  # the Ns measured, never fractions of one
            ax.set_xlabel("draws N (latent 16x64x64)")
            ax.set_ylabel("GB/s of required traffic")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
    fig.suptitle(f"{result['device']}: {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
