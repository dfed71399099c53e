"""Text-to-digit pipeline: prompts in, 8x8 images out, with the package's ODE samplers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ...sampling import apply_guidance, ode_sample, timestep_grid
from .model import DigitsModel

Seed = Union[int, Sequence[int]]


def initial_noise(n: int, seed: Seed, device="cpu", dtype=torch.float32, shape=DigitsModel.latent_shape) -> torch.Tensor:
    """x1 ~ N(0, I) [n, *shape], drawn on the CPU so results do not depend on the device.

    seed: an int (one generator for the whole batch) or n ints (one generator per
    row, so an image does not depend on what else is in the batch).

    Raises:
        ValueError: a seed list whose length is not n.
    """
    if isinstance(seed, (int,)) and not isinstance(seed, bool):
        noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    else:
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"seed must be an int or {n} ints (one per prompt), got {len(seeds)} seeds")
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    return noise.to(device=device, dtype=dtype)


class DigitsPipeline:
    """Samples digits from a :class:`DigitsModel` with the deterministic flow ODE.

    Default sampler: Euler, 10 steps, uniform grid (shift 1), no CFG; see
    docs/digiteval.md for why.
    """

    def __init__(self, model: DigitsModel, method: str = "euler", shift: float = 1.0):
        self.model = model
        self.method = method
        self.shift = shift

    @property
    def device(self) -> torch.device:
        return self.model.device

    def velocity_fn(self, prompts: Sequence[str], guidance_scale: float = 1.0):
        """v(x, t) for these prompts; CFG runs conditional and unconditional rows in one batched forward."""
        model = self.model
        cond = model.encode_prompts(prompts)
        if guidance_scale == 1.0:
            return lambda x, t: model.velocity(x, t, cond)
        uncond = model.encode_prompts([""] * len(prompts))
        both = {key: torch.cat([cond[key], uncond[key]]) for key in cond}

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v_cond, v_uncond = model.velocity(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            return apply_guidance(v_cond, v_uncond, guidance_scale)

        return guided

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: Sequence[str],
        num_steps: int = 10,
        guidance_scale: float = 1.0,
        seed: Seed = 0,
        method: Optional[str] = None,
        shift: Optional[float] = None,
    ) -> torch.Tensor:
        """Final latents [N, 1, 8, 8] float32 (see :meth:`__call__` for the arguments)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of str, got a single str (wrap it in a list)")
        x1 = initial_noise(len(prompts), seed, device=self.device)
        sigmas = timestep_grid(num_steps, shift=self.shift if shift is None else shift, device=self.device)
        return ode_sample(self.velocity_fn(prompts, guidance_scale), x1, sigmas, method=method or self.method)

    def __call__(
        self,
        prompts: Sequence[str],
        num_steps: int = 10,
        guidance_scale: float = 1.0,
        seed: Seed = 0,
        method: Optional[str] = None,
        shift: Optional[float] = None,
    ) -> torch.Tensor:
        """Images float32 [N, 8, 8] in [0, 1], in the orientation of sklearn's load_digits().images / 16.

        Args:
            prompts: N prompts, e.g. [digits.prompt(7)]; "" samples unconditionally.
            num_steps: ODE steps.
            guidance_scale: classifier-free guidance scale; 1.0 = no CFG (one forward per step).
            seed: int for the batch, or N ints (one per image, batch-independent).
            method: "euler" (default) or "dpm2"; shift: SD3 time shift of the grid (default 1).
        Raises:
            TypeError / ValueError: a bare str, a prompt naming no digit, a bad seed list or grid.
        """
        latents = self.sample_latents(prompts, num_steps, guidance_scale, seed, method, shift)
        return self.model.decode(latents)[:, 0].cpu()


def resolve_adapter_dir(adapter: Union[str, Path]) -> Path:
    """The LoRA checkpoint directory named by ``adapter``.

    ``adapter`` is a directory holding adapter_config.json, or a run directory
    whose summary.json has a "final_checkpoint" entry (absolute, or relative to
    that directory or to the working directory).

    Raises:
        FileNotFoundError: no adapter_config.json where the path leads.
    """
    path = Path(adapter)
    summary = path / "summary.json"
    if summary.is_file() and not (path / "adapter_config.json").is_file():
        entry = json.loads(summary.read_text()).get("final_checkpoint")
        if not entry:
            raise FileNotFoundError(f"{summary} has no 'final_checkpoint' entry")
        candidates = [Path(entry)] if Path(entry).is_absolute() else [path / entry, Path(entry)]
        path = next((c for c in candidates if (c / "adapter_config.json").is_file()), candidates[0])
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"no peft adapter at {path} (expected adapter_config.json and adapter_model.safetensors "
            "written by save_pretrained, or a summary.json naming final_checkpoint)"
        )
    return path


def load_pipeline(adapter: Optional[Union[str, Path]] = None, device="cpu", merge: bool = True) -> DigitsPipeline:
    """The shipped digits model as a pipeline, optionally with a trained LoRA adapter.

    Args:
        adapter: None, or a checkpoint directory / run directory (:func:`resolve_adapter_dir`).
        device: torch device.
        merge: fold the LoRA weights into the transformer (faster sampling, same outputs).
    Returns:
        :class:`DigitsPipeline` in eval mode.
    Raises:
        FileNotFoundError: no adapter where ``adapter`` leads. CorruptCheckpointError (a
        ValueError): the adapter lies in a checkpoint and its files differ from those written.
    """
    model = DigitsModel.load(device=device)
    if adapter is not None:
        from peft import PeftModel

        from ..._checksums import verify_adapter

        directory = resolve_adapter_dir(adapter)
        # Inside a checkpoint, the adapter's files must match the hashes recorded when it was written.
        verify_adapter(directory, ("adapter_model.safetensors", "adapter_config.json"))
        peft_model = PeftModel.from_pretrained(model.transformer, str(directory))
        model.transformer = peft_model.merge_and_unload() if merge else peft_model
        model.transformer.to(device).eval()
    return DigitsPipeline(model)
