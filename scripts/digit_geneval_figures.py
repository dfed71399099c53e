"""docs/images/digit_geneval_base.png: the shipped DigitGenEval base model without and with CFG.

    python scripts/digit_geneval_figures.py [--out docs/images/digit_geneval_base.png]

One row per (prompt, guidance scale), one column per seed; 10 Euler steps, as the record in
elbo_kernels/models/weights/digit_geneval/flow.json measures it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

PROMPTS = ("a 7", "a 3 and an 8", "three 7s", "a red 3", "a 3 left of an 8", "a red 3 left of a blue 8")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs/images/digit_geneval_base.png"))
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elbo_kernels.models import digit_geneval

    torch.set_num_threads(1)
    pipe = digit_geneval.DigitGenEvalPipeline(digit_geneval.DigitGenEvalModel.load())
    rows = [(p, g) for g in (1.0, 4.5) for p in PROMPTS]
    fig, axes = plt.subplots(len(rows), args.seeds, figsize=(1.0 * args.seeds + 2.6, 1.0 * len(rows)), squeeze=False)
    for r, (text, scale) in enumerate(rows):
        images = pipe([text] * args.seeds, num_steps=args.steps, guidance_scale=scale, seed=list(range(args.seeds)))
        for c in range(args.seeds):
            ax = axes[r][c]
            ax.imshow(images[c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"seed {c}", fontsize=8)
        label = f"{text} ({'no CFG' if scale == 1.0 else f'CFG {scale:g}'})"
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"DigitGenEval base model, {args.steps} Euler steps", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
