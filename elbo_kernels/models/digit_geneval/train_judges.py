"""Train the DigitGenEval reward and evaluation judges; write their weights and a json record.

    python -m elbo_kernels.models.digit_geneval.train_judges [--steps 3000] [--seed 0]

Each judge learns per-slot (digit or EMPTY, colour) from slot images built from its own split
of the real digits: the reward judge (MLP) from "reward_train", the evaluation judge (CNN) from
the disjoint "eval_train" (:func:`elbo_kernels.models.digits.judge_splits`); both are scored on
"held_out". A training slot is empty with probability 1/4 (background noise only), otherwise a
digit in a random colour with its RGB jittered by up to +-0.25, shifted by up to one pixel,
scaled in contrast by [0.6, 1.2] and with N(0, 0.05) noise, so that the judges are not brittle
on generated canvases. Deterministic given the seed; 81 s + 242 s on one thread of the shared, loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..digits.data import SPLIT_SEED, judge_splits, load_images
from .judges import EMPTY, JUDGES_METADATA, NUM_COLOURS, WEIGHTS_DIR, SlotEvalJudge, SlotRewardJudge
from .prompts import COLOURS

_RGB = torch.tensor(list(COLOURS.values()), dtype=torch.float32)


def slot_batch(images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator):
    """n augmented slot images [n, 3, 8, 8] in [0, 1] with digit labels [n] (EMPTY = 10) and colour labels [n]."""
    pick = torch.randint(0, len(images), (n,), generator=generator)
    grey = F.pad(images[pick].unsqueeze(1), (1, 1, 1, 1))
    dx, dy = (torch.randint(0, 3, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, :].expand(n, 8, 8)
    grey = grey[torch.arange(n)[:, None, None], 0, rows, cols]
    grey = grey * (0.6 + 0.6 * torch.rand(n, 1, 1, generator=generator))
    colour = torch.randint(0, NUM_COLOURS, (n,), generator=generator)
    rgb = (_RGB[colour] + 0.5 * (torch.rand(n, 3, generator=generator) - 0.5)).clamp(0, 1)
    slot = rgb[:, :, None, None] * grey[:, None]
    empty = torch.rand(n, generator=generator) < 0.25
    slot = torch.where(empty[:, None, None, None], torch.zeros_like(slot), slot)
    slot = (slot + 0.05 * torch.randn(slot.shape, generator=generator)).clamp(0, 1)
    digit = torch.where(empty, torch.full_like(labels[pick], EMPTY), labels[pick])
    return slot, digit, colour


def train(judge, images, labels, *, steps: int, seed: int, lr: float = 2e-3, batch_size: int = 128):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    judge.train()
    for _ in tqdm(range(steps), desc=type(judge).__name__, mininterval=2):
        slot, digit, colour = slot_batch(images, labels, batch_size, generator)
        digit_logits, colour_logits = judge.slot_logits(slot)
        present = digit != EMPTY
        loss = F.cross_entropy(digit_logits, digit, label_smoothing=0.05) + F.cross_entropy(
            colour_logits[present], colour[present], label_smoothing=0.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return judge.eval()


@torch.no_grad()
def accuracy(judge, images, labels, seed: int = 123, n: int = 4000) -> dict:
    """Digit (incl. EMPTY) and colour accuracy on n augmented slots of these images (fixed seed)."""
    slot, digit, colour = slot_batch(images, labels, n, torch.Generator().manual_seed(seed))
    judge.eval()
    digit_logits, colour_logits = judge.slot_logits(slot)
    present = digit != EMPTY
    return {"digit_or_empty": round(float((digit_logits.argmax(1) == digit).float().mean()), 4),
            "colour": round(float((colour_logits.argmax(1) == colour)[present].float().mean()), 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    images_np, labels_np = load_images()
    images = torch.from_numpy(np.array(images_np))
    labels = torch.from_numpy(np.array(labels_np))
    splits = judge_splits()
    held = torch.from_numpy(splits["held_out"])
    record = {
        "dataset": "sklearn.datasets.load_digits, images / 16, 1797 images; splits of elbo_kernels.models.digits.judge_splits",
        "split_seed": SPLIT_SEED,
        "split_sizes": {name: int(len(idx)) for name, idx in splits.items()},
        "steps": args.steps,
        "seed": args.seed,
        "slots": "empty w.p. 1/4; else a digit in a random colour, RGB jitter +-0.25, one-pixel shifts, "
                 "contrast x[0.6, 1.2], N(0, 0.05) noise",
    }
    for offset, (name, cls, split) in enumerate((("reward_judge", SlotRewardJudge, "reward_train"),
                                                 ("eval_judge", SlotEvalJudge, "eval_train"))):
        start = time.time()
        idx = torch.from_numpy(splits[split])
        torch.manual_seed(args.seed + offset)
        judge = train(cls(), images[idx], labels[idx], steps=args.steps, seed=args.seed + offset)
        other = torch.from_numpy(splits["eval_train" if split == "reward_train" else "reward_train"])
        record[name] = {
            "class": cls.__name__, "file": cls.weights_file, "train_split": split, "seed": args.seed + offset,
            "parameters": sum(p.numel() for p in judge.parameters()),
            "held_out_accuracy": accuracy(judge, images[held], labels[held]),
            "other_train_split_accuracy": accuracy(judge, images[other], labels[other]),
            "train_seconds": round(time.time() - start, 1),
        }
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(WEIGHTS_DIR / cls.weights_file))
        print(name, json.dumps(record[name]), flush=True)
    JUDGES_METADATA.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
