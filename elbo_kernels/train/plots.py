"""Plots a run writes: the learning curve and grids of samples (one row per prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def learning_curve(history: list, path: Path, *, metric: str = "digiteval", before: Optional[float] = None) -> None:
    """Reward mean (left axis) and the evaluation metric (right axis) against seconds."""
    seconds = [r["seconds"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(seconds, [r["reward_mean"] for r in history], color="tab:blue", label="reward (mean)")
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("reward", color="tab:blue")
    ax2 = ax.twinx()
    evaluated = [r for r in history if metric in r]
    xs = [r["seconds"] for r in evaluated]
    ys = [r[metric] for r in evaluated]
    if before is not None:
        xs, ys = [0.0] + xs, [before] + ys
    ax2.plot(xs, ys, "o-", color="tab:red", label=metric)
    if any("diversity" in r for r in evaluated):
        ax2.plot([r["seconds"] for r in evaluated], [r["diversity"] for r in evaluated], "s--", color="tab:green",
                 label="diversity ratio", alpha=0.7)
    ax2.axhline(0.9, color="grey", lw=0.8, ls=":")
    ax2.set_ylim(0, max(1.05, max(ys + [0]) + 0.05))
    ax2.set_ylabel(f"{metric} / diversity")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title("RL fine-tuning")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sample_grid(sampler, path: Path, prompts, *, seeds: int = 8) -> None:
    """One row per prompt, ``seeds`` columns; grayscale ([N, H, W] or [N, 1, H, W]) or RGB images, or videos
    [N, C, F, H, W] shown as a strip of their frames side by side."""
    rows = [p for p in prompts for _ in range(seeds)]
    with torch.no_grad():
        images = torch.as_tensor(sampler(rows, seed=list(range(seeds)) * len(prompts))).float().cpu()
    if images.dim() == 5:
        n, c, f, h, w = images.shape
        images = images.permute(0, 1, 3, 2, 4).reshape(n, c, h, f * w)
    if images.dim() == 4:
        images = images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1)
    aspect = images.shape[2] / images.shape[1]  # width / height: a frame strip is wide
    images = images.reshape(len(prompts), seeds, *images.shape[1:]).clamp(0, 1)
    fig, axes = plt.subplots(len(prompts), seeds, figsize=(seeds * 0.6 * aspect, len(prompts) * 0.6), dpi=100,
                             squeeze=False)
    for i in range(len(prompts)):
        for j in range(seeds):
            axes[i, j].imshow(images[i, j], cmap="gray_r" if images.dim() == 4 else None, vmin=0, vmax=1)
            axes[i, j].axis("off")
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0, right=1, top=1, bottom=0)
    fig.savefig(path)
    plt.close(fig)
