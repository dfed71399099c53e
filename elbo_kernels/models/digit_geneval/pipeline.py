"""Prompts in, DigitGenEval canvases out: the digits pipeline with a [3, 16, 16] latent."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ...sampling import ode_sample, timestep_grid
from ..digits.pipeline import DigitsPipeline, Seed, initial_noise, resolve_adapter_dir
from .model import DigitGenEvalModel


class DigitGenEvalPipeline(DigitsPipeline):
    """Samples canvases from a :class:`DigitGenEvalModel` with the flow ODE (Euler, 10 steps, no CFG by default)."""

    @torch.no_grad()
    def sample_latents(self, prompts: Sequence[str], num_steps: int = 10, guidance_scale: float = 1.0, seed: Seed = 0,
                       method: Optional[str] = None, shift: Optional[float] = None) -> torch.Tensor:
        """Final latents [N, 3, 16, 16] float32 (arguments as :meth:`__call__`)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of str, got a single str (wrap it in a list)")
        x1 = initial_noise(len(prompts), seed, device=self.device, shape=self.model.latent_shape)
        sigmas = timestep_grid(num_steps, shift=self.shift if shift is None else shift, device=self.device)
        return ode_sample(self.velocity_fn(prompts, guidance_scale), x1, sigmas, method=method or self.method)

    def __call__(self, prompts: Sequence[str], num_steps: int = 10, guidance_scale: float = 1.0, seed: Seed = 0,
                 method: Optional[str] = None, shift: Optional[float] = None) -> torch.Tensor:
        """Canvases float32 [N, 3, 16, 16] in [0, 1].

        Args:
            prompts: N DigitGenEval prompts (e.g. "a red 3 left of a blue 8"); "" samples unconditionally.
            num_steps: ODE steps. guidance_scale: CFG scale (1.0 = none). seed: an int, or one int per prompt.
            method: "euler" (default) or "dpm2"; shift: time shift of the grid (default 1).
        Raises:
            TypeError / ValueError: a bare str, a prompt that does not parse, a bad seed list or grid.
        """
        return self.model.decode(self.sample_latents(prompts, num_steps, guidance_scale, seed, method, shift)).cpu()


def load_pipeline(adapter: Optional[Union[str, Path]] = None, device="cpu", merge: bool = True) -> DigitGenEvalPipeline:
    """The shipped DigitGenEval model as a pipeline, optionally with a trained LoRA adapter
    (a checkpoint or run directory, as :func:`elbo_kernels.models.digits.load_pipeline` takes).

    Raises:
        FileNotFoundError: no adapter where ``adapter`` leads.
    """
    model = DigitGenEvalModel.load(device=device)
    if adapter is not None:
        from peft import PeftModel

        from ..._checksums import verify_adapter

        directory = resolve_adapter_dir(adapter)
        verify_adapter(directory, ("adapter_model.safetensors", "adapter_config.json"))
        peft_model = PeftModel.from_pretrained(model.transformer, str(directory))
        model.transformer = peft_model.merge_and_unload() if merge else peft_model
        model.transformer.to(device).eval()
    return DigitGenEvalPipeline(model)
