"""Flow-matching pretraining of the DigitGenEval model, with noisy captions and prompt dropout.

    python -m elbo_kernels.models.digit_geneval.pretrain --shipped          # the shipped model (3 stages)
    python -m elbo_kernels.models.digit_geneval.pretrain [--steps 4000] [--label_noise 0.4] [--init W]

Renders a fixed training set of canvases (``--dataset`` random compositions, all categories
equally likely, digits from all 1,797 images; :func:`~.canvas.render`), then trains the
transformer and the prompt encoder with the rectified-flow loss
|| v(x_t, t, c) - (eps - x0) ||^2, x_t = (1 - t) x0 + t eps, t ~ U(0, 1). Each caption is,
independently per example, the empty prompt with probability ``label_dropout`` (so CFG works);
otherwise another random example's caption with probability ``label_noise`` (noisy web
captions: without CFG the model follows prompts only partly, as SD3.5-M on GenEval); else its
own. The learning rate is constant after warm-up, so a run stopped at step N equals a run with
``--steps N``. Deterministic given ``--seed`` on one thread.

Writes models/weights/digit_geneval_flow.safetensors (EMA weights) and digit_geneval_flow.json
(configuration, timing, and DigitGenEval with and without CFG at 10 Euler steps). Needs the
judges first (``python -m elbo_kernels.models.digit_geneval.train_judges``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..._argparse import Parser
from tqdm import tqdm

from .canvas import render
from .model import FLOW_WEIGHTS, TRANSFORMER_CONFIG, DigitGenEvalModel
from .prompts import MAX_TOKENS, NULL, PAD, VOCABULARY, prompt, random_composition, tokenize


def training_set(size: int, seed: int, model: DigitGenEvalModel):
    """(latents float32 [size, 48, 2, 2], token ids int64 [size, 8]) of random compositions, encoded by ``model``."""
    rng = np.random.default_rng(seed)
    canvases, texts = [], []
    for _ in tqdm(range(size), desc="rendering", mininterval=2):
        composition = random_composition(rng)
        canvases.append(render(composition, rng)[0])
        texts.append(prompt(composition))
    with torch.no_grad():
        return model.encode(torch.from_numpy(np.stack(canvases))), tokenize(texts)


def noisy_captions(ids: torch.Tensor, pool: torch.Tensor, label_noise: float, label_dropout: float,
                   generator: torch.Generator) -> torch.Tensor:
    """Token ids [N, L]: the null prompt w.p. label_dropout, else a random caption from pool w.p. label_noise."""
    n = ids.shape[0]
    other = pool[torch.randint(0, len(pool), (n,), generator=generator)]
    noisy = torch.rand(n, generator=generator) < label_noise
    dropped = torch.rand(n, generator=generator) < label_dropout
    null = torch.full_like(ids, PAD)
    null[:, 0] = NULL
    ids = torch.where(noisy[:, None], other, ids)
    return torch.where(dropped[:, None], null, ids)


def measure(model: DigitGenEvalModel, guidance_scales=(1.0, 4.5), num_seeds: int = 10) -> dict:
    """DigitGenEval of the model at each guidance scale (10 Euler steps, the fixed evaluation prompts)."""
    from .evaluation import evaluate

    out = {}
    for scale in guidance_scales:
        result = evaluate(model, num_steps=10, guidance_scale=scale, num_seeds=num_seeds)
        out[f"euler_cfg{scale:g}"] = {key: round(result[key], 4) for key in (
            "digit_geneval", "diversity", "reward", "reward_agreement", "seconds")} | {
            "per_category": {k: round(v, 3) for k, v in result["per_category"].items()}}
    return out


# The shipped model's schedule: stages of (steps, label noise, seed), each starting from the previous stage's
# EMA weights with a fresh optimizer and warm-up. Less caption noise per stage sharpens prompt following.
SHIPPED_STAGES = ((4000, 0.4, 0), (4000, 0.3, 1), (3000, 0.2, 2))


def pretrain_shipped(out: str, threads: int = 1) -> dict:
    """Run SHIPPED_STAGES in sequence (the intermediate weights in a temporary directory); the last writes ``out``.

    Each stage is exactly ``main([...])`` with ``--init`` the previous stage's output, so stage by stage it
    equals the separate commands; the final record nests each stage's record under "init_record"."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="digit_geneval_pretrain_") as tmp:
        previous, record = None, {}
        for i, (steps, label_noise, seed) in enumerate(SHIPPED_STAGES):
            path = out if i == len(SHIPPED_STAGES) - 1 else str(Path(tmp) / f"stage{i + 1}.safetensors")
            print(f"stage {i + 1}/{len(SHIPPED_STAGES)}: {steps} steps, label noise {label_noise}, seed {seed}")
            record = main(["--steps", str(steps), "--label_noise", str(label_noise), "--seed", str(seed),
                           "--threads", str(threads), "--out", path, *(["--init", previous] if previous else [])])
            previous = path
    return record


def main(argv=None) -> dict:
    parser = Parser(description=__doc__)
    parser.add_argument("--shipped", action="store_true", help="reproduce the shipped model: every stage of "
                        "SHIPPED_STAGES in sequence (uses only --out and --threads of the other options)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--dataset", type=int, default=20000, help="rendered training canvases")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--label_noise", type=float, default=0.4)
    parser.add_argument("--label_dropout", type=float, default=0.1)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval_every", type=int, default=0, help="measure (and snapshot) every N steps; 0 = only at the end")
    parser.add_argument("--snapshots", default=None, help="directory for the EMA weights at each --eval_every step")
    parser.add_argument("--out", default=str(FLOW_WEIGHTS), help="safetensors path (json written beside it)")
    parser.add_argument("--init", default=None, help="start the model and its EMA from these weights (a second "
                        "stage: fresh optimizer and warm-up, the dataset and draws of --seed)")
    parser.add_argument("--record_only", default=None, help="copy these EMA weights (a --snapshots file of a run "
                        "with the same arguments) to --out and write its record, without training")
    args = parser.parse_args(argv)
    if args.shipped:
        return pretrain_shipped(args.out, args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from safetensors.torch import load_file, save_file

    if args.record_only:
        ema = DigitGenEvalModel()
        ema.load_state_dict(load_file(args.record_only))
        save_file({k: v.detach().contiguous() for k, v in ema.state_dict().items()}, args.out)
        return write_record(args, ema, {"snapshot_of": f"the step-{args.steps} snapshot of a longer run with these "
                                        f"arguments (equal to a run with --steps {args.steps}: constant lr)"})

    start = time.time()
    model = DigitGenEvalModel().train()
    if args.init:
        model.load_state_dict(load_file(args.init))
    latents, captions = training_set(args.dataset, args.seed, model)
    generator = torch.Generator().manual_seed(args.seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / args.warmup))

    def snapshot_eval(step: int) -> dict:
        frozen = copy.deepcopy(ema).eval()
        frozen.prompt_encoder.requires_grad_(False)
        return measure(frozen)

    losses, curve = [], []
    bar = tqdm(range(args.steps), desc="pretrain", mininterval=5)
    for step in bar:
        idx = torch.randint(0, len(latents), (args.batch_size,), generator=generator)
        x0 = latents[idx]
        ids = noisy_captions(captions[idx], captions, args.label_noise, args.label_dropout, generator)
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
        if (step + 1) % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            point = {"step": step + 1, "seconds": round(time.time() - start, 1)} | snapshot_eval(step + 1)
            curve.append(point)
            print(json.dumps(point), flush=True)
            if args.snapshots:
                Path(args.snapshots).mkdir(parents=True, exist_ok=True)
                save_file({k: v.detach().contiguous() for k, v in ema.state_dict().items()},
                          str(Path(args.snapshots) / f"step{step + 1:05d}.safetensors"))
    train_seconds = time.time() - start
    save_file({k: v.detach().contiguous() for k, v in ema.state_dict().items()}, args.out)
    return write_record(args, ema, {"final_loss_last_100": float(np.mean(losses[-100:])),
                                    "train_seconds": round(train_seconds, 1), "curve": curve})


def write_record(args, ema: DigitGenEvalModel, extra: dict) -> dict:
    """Measure the EMA model and write the json record (with sha256 of the flow and judge weights) beside args.out."""
    from .judges import WEIGHTS_DIR as JUDGES_DIR
    from .judges import SlotEvalJudge, SlotRewardJudge

    ema.prompt_encoder.requires_grad_(False)
    ema.eval()
    measured = measure(ema)
    out = Path(args.out)
    files = {out.name: out} | {cls.weights_file: JUDGES_DIR / cls.weights_file for cls in (SlotRewardJudge, SlotEvalJudge)}
    record = {
        "transformer_config": TRANSFORMER_CONFIG,
        "prompt_encoder": {"tokens": MAX_TOKENS, "vocabulary": list(VOCABULARY),
                           "architecture": "embedding + positions, 1 TransformerEncoderLayer (2 heads), mean-pooled"},
        "parameters": {"transformer": sum(p.numel() for p in ema.transformer.parameters()),
                       "prompt_encoder": sum(p.numel() for p in ema.prompt_encoder.parameters())},
        "training": {k: v for k, v in vars(args).items()
                     if k not in ("out", "snapshots", "eval_every", "record_only", "init")}
        | {"init": Path(args.init).name if args.init else None}
        | {"objective": "rectified flow, t ~ U(0, 1), constant lr after warm-up, EMA weights shipped"},
        "machine": f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "digit_geneval_10_steps": measured,
        "sha256": {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()},
    } | extra
    if args.init and Path(args.init).with_suffix(".json").is_file():
        record["init_record"] = json.loads(Path(args.init).with_suffix(".json").read_text())
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(measured, indent=1))
    return record


if __name__ == "__main__":
    main()
