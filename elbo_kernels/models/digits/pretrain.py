"""Flow-matching pretraining of the embedded digits model, with noisy labels.

    python -m elbo_kernels.models.digits.pretrain [--steps 3000] [--label_noise 0.6]

Trains the tiny SD3 transformer and the prompt encoder on all 1,797 digits with
the rectified-flow loss || v(x_t, t, c) - (eps - x0) ||^2, x_t = (1 - t) x0 + t eps,
t ~ U(0, 1). Each training label is, independently per example:
the empty prompt with probability ``label_dropout`` (for CFG); otherwise a
uniformly random digit with probability ``label_noise``; otherwise the true
digit. Label noise mirrors noisy web captions: the base model follows prompts
only weakly without CFG, and RL has headroom (docs/design.md section 4).

Writes models/weights/digits_flow.safetensors (EMA weights) and digits_flow.json
with the configuration, timing and measured DigitEval with and without CFG.
Needs the judges (``python -m elbo_kernels.models.digits.train_judges``) first.
"""

from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import torch

from ..._argparse import Parser

from .data import NUM_CLASSES, load_images, real_diversity, to_latents
from .model import (
    FLOW_WEIGHTS,
    NULL_TOKEN,
    PROMPT_TOKENS,
    TRANSFORMER_CONFIG,
    DigitsModel,
)


def noisy_labels(labels: torch.Tensor, label_noise: float, label_dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Token ids [N]: NULL_TOKEN w.p. label_dropout, else a random digit w.p. label_noise, else the label."""
    n = labels.shape[0]
    random_digit = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    noisy = torch.rand(n, generator=generator) < label_noise
    dropped = torch.rand(n, generator=generator) < label_dropout
    ids = torch.where(noisy, random_digit, labels)
    return torch.where(dropped, torch.full_like(ids, NULL_TOKEN), ids)


def measure(model: DigitsModel, guidance_scales=(1.0, 4.5), methods=("euler", "dpm2")) -> dict:
    """DigitEval of the model for each (method, guidance scale), 10 steps."""
    from .evaluation import evaluate

    out = {}
    for method in methods:
        for scale in guidance_scales:
            result = evaluate(model, num_steps=10, guidance_scale=scale, method=method)
            out[f"{method}_cfg{scale:g}"] = {
                key: round(result[key], 4)
                for key in ("digiteval", "diversity", "reward_agreement", "reward", "seconds")
            } | {"per_digit": {d: round(a, 3) for d, a in result["per_digit"].items()}}
    return out


def main(argv=None) -> dict:
    parser = Parser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--label_noise", type=float, default=0.6)
    parser.add_argument("--label_dropout", type=float, default=0.1)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(FLOW_WEIGHTS), help="safetensors path (json written beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from safetensors.torch import save_file

    images, labels = load_images()
    x_data = to_latents(torch.from_numpy(np.array(images)))
    y_data = torch.from_numpy(np.array(labels))
    generator = torch.Generator().manual_seed(args.seed)

    model = DigitsModel().train()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)

    def lr_factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start = time.time()
    losses = []
    for step in range(args.steps):
        idx = torch.randint(0, len(x_data), (args.batch_size,), generator=generator)
        x0 = x_data[idx]
        ids = noisy_labels(y_data[idx], args.label_noise, args.label_dropout, generator)
        t = torch.rand(args.batch_size, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        v = model.velocity(x_t, t, model.prompt_encoder(ids))
        loss = (v - (eps - x0)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 500 == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-500:]):.4f} ({time.time() - start:.0f} s)", flush=True)
    train_seconds = time.time() - start

    state = {k: v.detach().contiguous() for k, v in ema.state_dict().items()}
    save_file(state, args.out)
    ema.prompt_encoder.requires_grad_(False)
    ema.eval()
    measured = measure(ema)
    record = {
        "transformer_config": TRANSFORMER_CONFIG,
        "prompt_encoder": {"tokens": PROMPT_TOKENS, "vocabulary": "digits 0-9 and '' (unconditional)"},
        "parameters": {
            "transformer": sum(p.numel() for p in ema.transformer.parameters()),
            "prompt_encoder": sum(p.numel() for p in ema.prompt_encoder.parameters()),
        },
        "training": vars(args) | {"objective": "rectified flow, t ~ U(0, 1), EMA weights shipped"},
        "final_loss_last_500": float(np.mean(losses[-500:])),
        "train_seconds": round(train_seconds, 1),
        "machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
        "real_diversity": real_diversity(),
        "digiteval_10_steps": measured,
    }
    record["training"].pop("out")
    with open(str(args.out).replace(".safetensors", ".json"), "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    print(json.dumps(measured, indent=1))
    return record


if __name__ == "__main__":
    main()
