"""Run under `accelerate launch`: FlowGRPO's training loop structure on the drop-in, both estimators, CFG on.

As FlowGRPO's scripts/train_sd3.py: a peft LoRA model prepared by accelerate (DDP with several
processes), gradient accumulation over the trained timesteps, per-epoch shuffling and
re-batching, `transformer.module.disable_adapter()` for the reference of the KL term.

Usage: flowgrpo_multiprocess_job.py OUTPUT_DIR   (writes OUTPUT_DIR/<estimator>_rank<R>.pt)
"""

import sys
from pathlib import Path

import ml_collections
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).parent))
from flowgrpo_reference import NUM_STEPS, cfg_embeds, rollout, with_advantages  # noqa: E402

from elbo_kernels.integrations import flow_grpo as fg  # noqa: E402
from elbo_kernels.models.sd3 import SD3Model, save_tiny_pipeline  # noqa: E402
from elbo_kernels.rewards.simple import brightness  # noqa: E402

out = Path(sys.argv[1])
TIMESTEP_FRACTION, INNER_EPOCHS, BATCHES = 0.8, 2, 2
num_train_timesteps = int(NUM_STEPS * TIMESTEP_FRACTION)

for estimator in ("trajectory", "elbo"):
    # cpu=True: on a machine without GPUs this is what makes accelerate wrap the model in DDP over gloo
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=num_train_timesteps)  # a batch per update
    rank = accelerator.process_index
    torch.manual_seed(0)
    path = out / "tiny_sd3"
    if accelerator.is_main_process and not path.exists():
        save_tiny_pipeline(path)
    accelerator.wait_for_everyone()
    model = SD3Model.load(str(path), max_sequence_length=8)
    transformer = get_peft_model(model.transformer, LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                                               target_modules=model.lora_target_modules))
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    initial = {n: p.detach().clone() for n, p in transformer.named_parameters() if "lora_" in n}
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    config = ml_collections.ConfigDict(dict(
        sample=dict(num_steps=NUM_STEPS, noise_level=0.7, guidance_scale=4.5),
        train=dict(cfg=True, beta=0.04, clip_range=1e-4, adv_clip_max=5.0, timestep_fraction=TIMESTEP_FRACTION,
                   estimator=estimator, backend="auto")))
    set_seed(rank, device_specific=False)
    prompts = [["a red cube", "a blue ball"], ["a green tree", "a white cloud"]][rank] * 2
    sample, images = rollout(model, prompts, seed=rank, guidance_scale=4.5)
    sample = with_advantages(sample, prompts, brightness(images, prompts)[0]["avg"])
    if fg.estimator(config) == "elbo":
        sample = fg.prepare_elbo_samples(transformer, model.pipeline, sample, config, seed=rank)
    losses = []
    total = sample["timesteps"].shape[0]
    for inner_epoch in range(INNER_EPOCHS):
        perm = torch.randperm(total)
        shuffled = {k: v[perm] for k, v in sample.items()}
        batches = [{k: v[i::BATCHES] for k, v in shuffled.items()} for i in range(BATCHES)]
        for batch in batches:
            embeds, pooled = cfg_embeds(model, batch)
            for j in range(num_train_timesteps):
                with accelerator.accumulate(transformer):
                    _, log_prob, mean, std = fg.compute_log_prob(transformer, model.pipeline, batch, j, embeds,
                                                                 pooled, config)
                    with torch.no_grad(), transformer.module.disable_adapter():
                        _, _, mean_ref, _ = fg.compute_log_prob(transformer, model.pipeline, batch, j, embeds,
                                                                pooled, config)
                    loss, info = fg.grpo_loss(batch, j, log_prob, config, mean, std, mean_ref)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(transformer.parameters(), 1.0)
                    optimizer.step()
                    optimizer.zero_grad()
                    losses.append(float(loss))
    lora = {n.removeprefix("module."): p.detach().clone() for n, p in transformer.named_parameters() if "lora_" in n}
    torch.save({"losses": losses, "lora": lora, "initial": initial, "prompts": prompts},
               out / f"{estimator}_rank{rank}.pt")
    accelerator.wait_for_everyone()
