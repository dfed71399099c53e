"""Train the reward and evaluation judges and write their weights and a json record.

    python -m elbo_kernels.models.digits.train_judges [--epochs 300]

Reward judge (MLP) on the "reward_train" split, evaluation judge (CNN) on the
disjoint "eval_train" split, both scored on the shared "held_out" split
(:func:`~elbo_kernels.models.digits.data.judge_splits`). Training augments with
random one-pixel shifts, contrast jitter and pixel noise, so the judges are
not brittle on generated digits. About 40 seconds on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from .data import NUM_HELD_OUT, SPLIT_SEED, judge_splits, load_images
from .judges import JUDGES_METADATA, WEIGHTS_DIR, EvalJudge, RewardJudge


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift by up to one pixel, contrast scale in [0.8, 1.2], N(0, 0.05) noise; [N, 1, 8, 8]."""
    n = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=generator)
    dy = torch.randint(0, 3, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, :].expand(n, 8, 8)
    shifted = padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    scale = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = 0.05 * torch.randn(shifted.shape, generator=generator)
    return (shifted * scale + noise).clamp(0, 1)


def accuracy(judge: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    judge.eval()
    with torch.no_grad():
        return float((judge(images).argmax(1) == labels).float().mean())


def train(judge, images, labels, *, epochs: int, seed: int, lr: float = 2e-3, batch_size: int = 64):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-3)
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for _ in range(epochs):
        judge.train()
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(judge(augment(images[idx], generator)), labels[idx], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return judge.eval()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    images_np, labels_np = load_images()
    images = torch.from_numpy(np.array(images_np)).unsqueeze(1)
    labels = torch.from_numpy(np.array(labels_np))
    splits = judge_splits()
    held = torch.from_numpy(splits["held_out"])
    record = {
        "dataset": "sklearn.datasets.load_digits, images / 16, 1797 images",
        "split_seed": SPLIT_SEED,
        "split_sizes": {name: int(len(idx)) for name, idx in splits.items()},
        "split_rule": "numpy default_rng(split_seed).permutation(1797): first "
        f"{NUM_HELD_OUT} held out, then half reward_train, half eval_train",
        "epochs": args.epochs,
        "augmentation": "one-pixel shifts, contrast x[0.8, 1.2], N(0, 0.05) noise",
    }
    for name, cls, split, seed in (
        ("reward_judge", RewardJudge, "reward_train", 1),
        ("eval_judge", EvalJudge, "eval_train", 2),
    ):
        start = time.time()
        idx = torch.from_numpy(splits[split])
        judge = train(cls(), images[idx], labels[idx], epochs=args.epochs, seed=seed)
        other = torch.from_numpy(splits["eval_train" if split == "reward_train" else "reward_train"])
        record[name] = {
            "class": cls.__name__,
            "file": cls.weights_file,
            "train_split": split,
            "torch_seed": seed,
            "parameters": sum(p.numel() for p in judge.parameters()),
            "held_out_accuracy": accuracy(judge, images[held], labels[held]),
            "other_train_split_accuracy": accuracy(judge, images[other], labels[other]),
            "train_seconds": round(time.time() - start, 1),
        }
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(WEIGHTS_DIR / cls.weights_file))
        print(name, json.dumps(record[name]))
    JUDGES_METADATA.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
