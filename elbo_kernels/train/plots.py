"""Plots a run writes: the learning curve and grids of samples (one row per prompt, one column per seed).

``curve_figure`` and ``grid_figure`` build the matplotlib figures (what the tests inspect);
``learning_curve`` and ``sample_grid`` save them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

THRESHOLD = 0.9  # the metric level the README and summary.json report time to ("seconds_to_0.9")
LABEL_CHARS = 28  # longer prompts are shortened in row labels (SD3 prompts run to hundreds of characters)


def curve_figure(history: list, *, metric: str = "digiteval", before: Optional[float] = None,
                 diversity_before: Optional[float] = None):
    """Reward mean (left axis), the evaluation metric and the diversity ratio (right axis) against
    wall-clock seconds; the before-training values are drawn at 0 s."""
    seconds = [r["seconds"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(seconds, [r["reward_mean"] for r in history], color="tab:blue", label="reward (mean)")
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("reward", color="tab:blue")
    evaluated = [r for r in history if metric in r]
    lines = ax.get_legend_handles_labels()
    if evaluated:  # a task that only has a reward gets no metric axis, and no metric threshold line
        ax2 = ax.twinx()
        xs, ys = [r["seconds"] for r in evaluated], [r[metric] for r in evaluated]
        if before is not None:
            xs, ys = [0.0] + xs, [before] + ys
        ax2.plot(xs, ys, "o-", color="tab:red", label=metric)
        diversity = [(r["seconds"], r["diversity"]) for r in evaluated if "diversity" in r]
        if diversity_before is not None and diversity:
            diversity = [(0.0, diversity_before)] + diversity
        if diversity:
            ax2.plot(*zip(*diversity), "s--", color="tab:green", label="diversity ratio", alpha=0.7)
        ax2.axhline(THRESHOLD, color="grey", lw=0.8, ls=":", label=f"{metric} {THRESHOLD}")
        # Every plotted value must be inside the axis: diversity starts above 1 (1.18 on DigitEval).
        top = max([1.0] + ys + [d for _, d in diversity])
        ax2.set_ylim(0, top + 0.05)
        ax2.set_ylabel(f"{metric} / diversity")
        lines2 = ax2.get_legend_handles_labels()
        lines = (lines[0] + lines2[0], lines[1] + lines2[1])
    ax.legend(*lines, loc="lower right", fontsize=8)
    ax.set_title("RL fine-tuning")
    fig.tight_layout()
    return fig


def learning_curve(history: list, path: Path, *, metric: str = "digiteval", before: Optional[float] = None,
                   diversity_before: Optional[float] = None) -> None:
    fig = curve_figure(history, metric=metric, before=before, diversity_before=diversity_before)
    fig.savefig(path)
    plt.close(fig)


def _label(prompt: str) -> str:
    prompt = prompt or '"" (unconditional)'
    return prompt if len(prompt) <= LABEL_CHARS else prompt[:LABEL_CHARS - 3] + "..."


def grid_figure(images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int], *, title: str = ""):
    """images [len(prompts) * len(seeds), ...] row-major (prompt-major), grayscale [H, W] / [1, H, W],
    RGB [3, H, W], or videos [C, F, H, W] (shown as a strip of frames), in [0, 1]; the prompt labels
    each row, the seed each column."""
    images = torch.as_tensor(images).float().cpu()
    if images.dim() == 5:  # videos [N, C, F, H, W]: a strip of their frames side by side
        n, c, f, h, w = images.shape
        images = images.permute(0, 1, 3, 2, 4).reshape(n, c, h, f * w)
    if images.dim() == 4:
        images = images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1)
    aspect = images.shape[2] / images.shape[1]  # width / height: a frame strip is wide
    rows, cols = len(prompts), len(seeds)
    images = images.reshape(rows, cols, *images.shape[1:]).clamp(0, 1)
    grayscale = images.dim() == 4
    width = 1.6 + cols * 0.6 * aspect
    fig, axes = plt.subplots(rows, cols, figsize=(width, 0.5 + rows * 0.6), dpi=100, squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            # Pixel value 0 black, 1 white, as the model and the rewards see it: a brightness or
            # darkness reward shows as brighter or darker images (gray_r drew them inverted).
            ax.imshow(images[i, j].numpy(), cmap="gray" if grayscale else None, vmin=0, vmax=1)
            # Ticks and frame off, but not the axis: its labels carry the prompt and the seed.
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i == 0:
                ax.set_title(f"seed {seeds[j]}", fontsize=7)
        axes[i, 0].set_ylabel(_label(prompts[i]), rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=1.5 / width, right=0.99, bottom=0.01,
                        top=1 - 0.45 / (0.5 + rows * 0.6))
    return fig


def sample_grid(sampler, path: Path, prompts, *, seeds: int = 8, title: str = "") -> None:
    """Sample ``seeds`` images per prompt (seed j for column j) and save the labelled grid."""
    rows = [p for p in prompts for _ in range(seeds)]
    with torch.no_grad():
        images = sampler(rows, seed=list(range(seeds)) * len(prompts))
    fig = grid_figure(images, list(prompts), list(range(seeds)), title=title)
    fig.savefig(path)
    plt.close(fig)
