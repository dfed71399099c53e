"""Trainer configuration: one dataclass, loadable from YAML, overridable with --key value.

Every method of the design-space study is a configuration of the same loop:

    recipe (default)   estimator=elbo objective=pepg weighting=adaptive sampler=ode guidance_scale=1
    FlowGRPO           estimator=trajectory objective=grpo sampler=sde (configs/flowgrpo_sd3.yaml: its SD3
                       config's CFG, steps trained, inner_steps, advantage_std, rollout_policy, evaluation)
    DiffusionNFT       estimator=elbo objective=nft weighting=adaptive sampler=ode advantage_mode=nft
                       advantage_std=global (configs/diffusion_nft_geneval.yaml: its GenEval config)
    AWM                estimator=elbo objective=grpo weighting=ghuber timestep_sampler=grid_strata
                       anchor_beta=1 (configs/awm_geneval.yaml: its GenEval config)
    ELBO + SDE         estimator=elbo sampler=sde

``validate()`` runs before any work and names the key, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..advantages import ADVANTAGE_KINDS, ADVANTAGE_MODE_RECORDS, ADVANTAGE_MODES
from ..backends import BACKENDS
from ..estimators import DEPRECATED_WEIGHTINGS, ESTIMATORS, NOISE_MODES, SDE_TYPES, TIMESTEP_SAMPLERS, WEIGHTINGS
from ..objectives import KL_ESTIMATORS, OBJECTIVES
from ..objectives.kl import VELOCITY_KLS
from ..sampling import ODE_METHODS
from .._argparse import choices_metavar
from .errors import ConfigError
from .trackers import REPORT_TO

# Keys whose value may be None ("none" on the command line).
OPTIONAL = ("output_dir", "kl", "stop_at", "prompts", "weights_dtype", "resolution", "shift", "frames", "guidance",
            "lora_target_modules", "timestep_proposal", "trajectory_steps", "eval_num_steps", "eval_guidance_scale",
            "timestep_last_step")
SAMPLERS = ("ode", "sde")
ON_NON_FINITE = ("skip", "raise")
TASKS = ("digiteval", "digit_geneval")
TRAJECTORY_STEP_ORDERS = ("random", "first")
ADVANTAGE_STDS = ("group", "global")
ROLLOUT_POLICIES = ("old", "current")
RESUME_AUTO = "auto"


def choices() -> Dict[str, tuple]:
    """The keys that take one of a set of values, and those values: validate() checks them, `train --help`
    shows them as {...}. Built on each call: a row added to the OBJECTIVES table later counts."""
    return {
        "sampler": SAMPLERS,
        "ode_method": ODE_METHODS,
        "sde_type": SDE_TYPES,
        "estimator": ESTIMATORS,
        "timestep_sampler": TIMESTEP_SAMPLERS,
        "noise_mode": NOISE_MODES,
        "objective": tuple(OBJECTIVES),
        "weighting": WEIGHTINGS + tuple(DEPRECATED_WEIGHTINGS),
        "kl": KL_ESTIMATORS + (None,),
        "anchor_kl": VELOCITY_KLS,
        "advantage_mode": ADVANTAGE_MODES,
        "backend": BACKENDS,
        "mixed_precision": ("no", "fp16", "bf16"),
        "on_non_finite": ON_NON_FINITE,
        "report_to": REPORT_TO,
        "task": TASKS,
        "trajectory_step_order": TRAJECTORY_STEP_ORDERS,
        "advantage_std": ADVANTAGE_STDS,
        "rollout_policy": ROLLOUT_POLICIES,
        "weights_dtype": (None, "fp32", "bf16", "fp16"),
    }


# `train --help` groups: each starts at the named key and runs to the next (the sections of TrainConfig);
# keys whose field says "deprecated" are listed apart, in one group, whatever their place.
HELP_GROUPS = (("model", "what to train, on what, where"), ("epochs", "rollouts (with the old policy)"),
               ("estimator", "likelihood estimator and objective"), ("lr", "optimisation"),
               ("on_non_finite", "failures (docs/reliability.md)"),
               ("eval_every", "evaluation, logging, checkpoints"))


@dataclass
class TrainConfig:
    # What to train, on what, where.
    model: str = field(default="digits", metadata={"help": "'digits' (embedded), or a hub id / local diffusers folder of an SD3, FLUX.1, Wan or Qwen-Image pipeline"})
    task: str = field(default="digiteval", metadata={"help": "embedded task when model is 'digits': digiteval | "
                      "digit_geneval (GenEval-like compositions; docs/digit_geneval.md)"})
    reward: str = field(default="digit", metadata={"help": "reward name (see elbo_kernels.rewards), weighted "
                        "list 'a:0.5,b:0.5', or your own 'package.module:attribute' (FlowGRPO's reward signature)"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "where metrics, plots and checkpoints go (none = "
                                      "outputs/TASK, or outputs/TASK-2, -3, ... when that holds another run; with "
                                      "resume the newest of them; TASK is the model's folder name for other models)"})
    seed: int = field(default=0, metadata={"help": "global seed (each epoch and process derives its own)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint that verifies; 'auto' "
                         "(for requeued jobs): the same, or a fresh start when output_dir holds nothing of this run, "
                         "and a refusal when it holds another run"})
    overwrite: bool = field(default=False, metadata={"help": "delete another run's files in output_dir first "
                            "(without it, a run refuses to start where another run's files are)"})
    prompts: Optional[str] = field(default=None, metadata={"help": "SD3: prompt file (.txt, or FlowGRPO .jsonl with metadata)"})
    weights_dtype: Optional[str] = field(default=None, metadata={"help": "SD3: fp32 | bf16 | fp16 for the frozen weights"})
    resolution: Optional[int] = field(default=None, metadata={"help": "SD3: image size in pixels (512)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "SD3: checkpoint transformer blocks"})
    without_t5: bool = field(default=False, metadata={"help": "SD3: drop the T5-XXL text encoder"})
    frames: Optional[int] = field(default=None, metadata={"help": "Wan: video frames, 4k + 1 (none = 81, WanPipeline's default)"})
    guidance: Optional[float] = field(default=None, metadata={"help": "FLUX.1-dev: embedded guidance strength (none = 3.5)"})
    lora_target_modules: Optional[str] = field(default=None, metadata={
        "help": "comma-separated module names for LoRA (none = the model family's attention projections)"})

    # Rollouts (with the old policy).
    epochs: int = field(default=80, metadata={"help": "number of epochs (rollout + update rounds)",
                                              "aka": ("num_epochs", "max_epochs")})
    prompts_per_epoch: int = field(default=10, metadata={"help": "distinct prompts per epoch"})
    group_size: int = field(default=8, metadata={"help": "rollouts per prompt (the advantage group)"})
    sampler: str = field(default="ode", metadata={"help": "rollout sampler: ode | sde"})
    ode_method: str = field(default="euler", metadata={"help": "ODE solver: euler | dpm2"})
    num_steps: int = field(default=10, metadata={"help": "sampler steps"})
    shift: Optional[float] = field(default=None, metadata={"help": "time shift of the step grid (none = the model's: 1 digits, 3 SD3)"})
    guidance_scale: float = field(default=1.0, metadata={"help": "CFG scale in rollouts (1 = no CFG)"})
    noise_level: float = field(default=0.7, metadata={"help": "SDE noise level (eta)"})
    sde_type: str = field(default="sde", metadata={"help": "SDE variant: sde | cps"})
    rollout_policy: str = field(default="old", metadata={"help": "policy that samples the rollouts: old (the lagging "
                                "blend) | current (FlowGRPO: the policy being trained)"})

    # Likelihood estimator and objective.
    estimator: str = field(default="elbo", metadata={"help": "elbo (final sample) | trajectory (SDE steps)"})
    draws_per_sample: int = field(default=4, metadata={"help": "K: ELBO draws (t, eps) per sample (estimator elbo); "
                                  "with estimator trajectory, the SDE steps trained when trajectory_steps is none"})
    trajectory_steps: Optional[int] = field(default=None, metadata={"help": "estimator trajectory: SDE steps trained "
                                            "per sample (none = draws_per_sample; FlowGRPO's SD3 configs: 9 of 10)"})
    trajectory_step_order: str = field(default="random", metadata={"help": "estimator trajectory: which steps are "
                                       "trained: random (a random subset per sample) | first (the first ones, in "
                                       "order, as FlowGRPO's timestep_fraction)"})
    timestep_sampler: str = field(default="grid", metadata={"help": "grid | uniform | logit_normal | stratified | sobol | grid_stratified (docs/variance.md) | grid_strata (AWM: one grid step per stratum of timestep_first_step..timestep_last_step - 1)"})
    timestep_first_step: int = field(default=1, metadata={"help": "grid_strata: first grid step used (step 0 is t = 1; AWM: 1)"})
    timestep_last_step: Optional[int] = field(default=None, metadata={"help": "grid_strata: grid steps used end "
                                              "before this one (none = num_steps; AWM: int(14 * 0.9) = 12)"})
    noise_mode: str = field(default="iid", metadata={"help": "iid | antithetic | sobol (docs/variance.md)"})
    timestep_proposal: Optional[str] = field(default=None, metadata={"help": "grid sampler: comma-separated relative "
                                             "probabilities of the positive grid steps (rollout order); t is drawn "
                                             "from them and each draw's gradient reweighted by 1/(M q), unbiased "
                                             "(docs/variance.md; none = the plain grid sampler)"})
    group_draws: bool = field(default=False, metadata={"help": "the samples of one prompt group use the same (t, eps) "
                              "draws: common random numbers across the group (docs/variance.md)"})
    objective: str = field(default="pepg", metadata={"help": "one of " + ", ".join(OBJECTIVES)})
    weighting: str = field(default="adaptive", metadata={"help": "simple | t_squared | t_linear | path_kl | adaptive | "
                           "ghuber ('t' is the deprecated name of t_squared)"})
    ghuber_power: float = field(default=0.25, metadata={"help": "weighting ghuber: its exponent p (AWM: 0.25)"})
    kl: Optional[str] = field(default="girsanov", metadata={"help": "girsanov | girsanov_sde | kl1..kl3[_iw] | none"})
    beta: float = field(default=0.05, metadata={"help": "KL weight"})
    clip_range: float = field(default=1e-3, metadata={"help": "grpo clip range"})
    adv_clip_max: float = field(default=5.0, metadata={"help": "advantage clamp (grpo, awm), nft scale"})
    nft_beta: float = field(default=1.0, metadata={"help": "DiffusionNFT blend g"})
    anchor_beta: float = field(default=0.0, metadata={"help": "weight of a KL to an anchor policy, an EMA of the "
                               "trained one (AWM's ema_beta; 0 = off; estimator elbo)"})
    anchor_kl: str = field(default="girsanov", metadata={"help": "the anchor's KL: girsanov (AWM's 'Uniform') | "
                           "girsanov_sde (AWM's 'ELBO')"})
    anchor_decay_rate: float = field(default=0.001, metadata={"help": "anchor <- d anchor + (1-d) new after each epoch, "
                                     "d = min(rate*step, anchor_decay_max) (AWM's 'linear' kl_ema_decay_type)"})
    anchor_decay_max: float = field(default=0.3, metadata={"help": "cap of the anchor decay d (AWM: 0.3)"})
    advantage_mode: str = field(default="exact", metadata={"help": "standard | exact | nft"})
    advantage_scale: float = field(default=1.0, metadata={"help": "scale of the exact and standard advantages "
                                   "(AWM: 0.2 with adv_clip_max 1, i.e. clip(A, -5, 5) / 5)"})
    advantage_std: str = field(default="group", metadata={"help": "std of the standard / nft advantages: group (per "
                               "prompt) | global (all rewards of the batch, FlowGRPO's global_std)"})
    backend: str = field(default="auto", metadata={"help": "kernel backend: auto | torch | cpu | cuda | triton"})

    # Optimisation.
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate", "aka": ("learning_rate",)})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    inner_steps: int = field(default=1, metadata={"help": "optimizer steps per epoch: the shuffled batch is split "
                             "into this many parts, one step each, with the old policy fixed within the epoch "
                             "(FlowGRPO's SD3 configs: 2)"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank (0 = full fine-tuning with a frozen reference copy)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    old_decay_rate: float = field(default=0.001, metadata={"help": "old <- d old + (1-d) new, d = min(rate*step, max)"})
    old_decay_max: float = field(default=0.5, metadata={"help": "cap of the old-policy decay d"})
    ema_decay: float = field(default=0.5, metadata={"help": "EMA of the policy used for evaluation (0 = off)"})
    micro_batch: int = field(default=0, metadata={"help": "draws per forward/backward (0 = all at once)"})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision: no | fp16 | bf16"})
    num_threads: int = field(default=1, metadata={"help": "intra-op CPU threads (0 = torch's default); the tiny "
                             "DigitEval model's ops are too small to split, and more threads oversubscribe"})

    # Failures (docs/reliability.md).
    on_non_finite: str = field(default="skip", metadata={
        "help": "NaN/Inf in model outputs, rewards, loss or gradients: skip (skip the epoch's update, log it) | "
                "raise (stop at once with NonFiniteError)"})
    max_consecutive_skips: int = field(default=5, metadata={
        "help": "stop with NonFiniteError after this many consecutive skipped updates"})

    # Evaluation, logging, checkpoints.
    eval_every: int = field(default=5, metadata={"help": "epochs between evaluations (0 = only before/after)"})
    eval_seeds: int = field(default=20, metadata={"help": "evaluation seeds per prompt"})
    eval_num_steps: Optional[int] = field(default=None, metadata={"help": "ODE steps at evaluation (none = the "
                                          "task's own: 10 for digits; FlowGRPO evaluates SD3 with 40)"})
    eval_guidance_scale: Optional[float] = field(default=None, metadata={"help": "CFG scale at evaluation (none = "
                                                 "the task's own: 1 for digits; FlowGRPO evaluates with 4.5)"})
    stop_at: Optional[float] = field(default=0.95, metadata={"help": "stop once the evaluation metric reaches this (none = never)"})
    checkpoint_every: int = field(default=20, metadata={"help": "epochs between checkpoints (the last is always saved)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "complete checkpoints kept on disk"})
    plots: bool = field(default=True, metadata={"help": "write curve.png and sample grids"})
    tensorboard: bool = field(default=True, metadata={"help": "false turns TensorBoard off whatever report_to says",
                                                      "deprecated": "use --report_to to choose the trackers"})
    report_to: str = field(default="tensorboard", metadata={"help": "experiment trackers (through accelerate): "
                           "tensorboard | wandb | all | none; wandb needs pip install -e \".[wandb]\""})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    # ------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.prompts_per_epoch * self.group_size

    @property
    def steps_trained(self) -> int:
        """Estimator trajectory: SDE steps trained per sample (trajectory_steps, else the older draws_per_sample)."""
        return self.draws_per_sample if self.trajectory_steps is None else self.trajectory_steps

    def validate(self) -> "TrainConfig":
        """Check every value; raise ValueError naming the key, the value and what is allowed.

        What an objective needs (advantages, estimators) comes from its record in OBJECTIVES
        (objectives/table.py), what an advantage mode gives from ADVANTAGE_MODE_RECORDS
        (advantages/modes.py)."""
        for key, allowed in choices().items():
            _require(getattr(self, key) in allowed, key, getattr(self, key), "one of " + ", ".join(map(repr, allowed)))
        for key in ("epochs", "prompts_per_epoch", "group_size", "num_steps", "draws_per_sample", "eval_seeds",
                    "keep_checkpoints", "max_consecutive_skips", "inner_steps"):
            value = getattr(self, key)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key, value, "an int >= 1")
        for key in ("eval_every", "checkpoint_every", "micro_batch", "lora_rank", "seed", "num_threads"):
            value = getattr(self, key)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key, value, "an int >= 0")
        for key in ("lr", "clip_range", "adv_clip_max", "nft_beta", "noise_level", "guidance_scale", "lora_alpha",
                    "ghuber_power"):
            value = getattr(self, key)
            _require(_finite(value) and value > 0, key, value, "a finite number > 0")
        for key in ("beta", "weight_decay", "grad_clip", "advantage_scale", "anchor_beta"):
            value = getattr(self, key)
            _require(_finite(value) and value >= 0, key, value, "a finite number >= 0")
        for key in ("old_decay_rate", "old_decay_max", "ema_decay", "anchor_decay_rate", "anchor_decay_max"):
            value = getattr(self, key)
            _require(_finite(value) and 0 <= value < 1, key, value, "a number in [0, 1)")
        _require(self.seed < 2 ** 63, "seed", self.seed, "an int in [0, 2**63)")
        for key in ("trajectory_steps", "eval_num_steps"):
            value = getattr(self, key)
            _require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1), key,
                     value, "none or an int >= 1")
        _require(self.eval_guidance_scale is None or (_finite(self.eval_guidance_scale) and self.eval_guidance_scale >= 1),
                 "eval_guidance_scale", self.eval_guidance_scale, "none or a number >= 1 (1 = no CFG)")
        _require(self.batch_size % self.inner_steps == 0, "inner_steps", self.inner_steps,
                 f"a divisor of prompts_per_epoch * group_size ({self.batch_size}): the batch is split into equal parts")
        _require(isinstance(self.resume, bool) or self.resume == RESUME_AUTO, "resume", self.resume,
                 f"true, false or {RESUME_AUTO!r}")
        for key in ("overwrite", "plots", "tensorboard", "progress", "group_draws"):
            _require(isinstance(getattr(self, key), bool), key, getattr(self, key), "true or false")
        for key in ("model", "reward"):
            _require(isinstance(getattr(self, key), str) and getattr(self, key) != "", key, getattr(self, key),
                     "a non-empty string")
        _require(self.output_dir is None or (isinstance(self.output_dir, str) and self.output_dir != ""),
                 "output_dir", self.output_dir, "none (a directory per task and run) or a non-empty string")
        _require(self.guidance_scale >= 1, "guidance_scale", self.guidance_scale, ">= 1 (1 = no CFG)")
        objective, mode = OBJECTIVES[self.objective], ADVANTAGE_MODE_RECORDS[self.advantage_mode]
        if mode.uses_std and self.group_size == 1:
            _require(False, "group_size", 1, ">= 2 with std-normalised advantages (advantage_mode "
                     f"{self.advantage_mode!r}): a group of one has no spread")
        suitable = [name for name in ADVANTAGE_MODES if objective.takes(ADVANTAGE_MODE_RECORDS[name].kind)]
        _require(objective.takes(mode.kind), "advantage_mode", self.advantage_mode,
                 f"one of {', '.join(map(repr, suitable))} with objective {self.objective!r} (it takes "
                 f"{ADVANTAGE_KINDS[objective.advantage_kind]})")
        if self.estimator == "trajectory":
            _require(self.sampler == "sde", "sampler", self.sampler, "'sde' with estimator 'trajectory' "
                     "(the trajectory estimator needs the SDE's per-step log-probabilities)")
        usable = [name for name, other in OBJECTIVES.items() if self.estimator in other.estimators]
        _require(self.estimator in objective.estimators, "objective", self.objective,
                 f"one of {', '.join(map(repr, usable))} with estimator {self.estimator!r}")
        if self.estimator == "trajectory":
            _require(self.kl in (None, "girsanov"), "kl", self.kl, "'girsanov' or None with estimator 'trajectory'")
            key = "draws_per_sample" if self.trajectory_steps is None else "trajectory_steps"
            _require(self.steps_trained <= self.num_steps, key, self.steps_trained,
                     f"<= num_steps ({self.num_steps}): the steps trained are a subset of the grid")
        if self.estimator == "elbo" and self.timestep_sampler in ("grid", "grid_stratified"):
            _require(self.draws_per_sample <= self.num_steps, "draws_per_sample", self.draws_per_sample,
                     f"<= num_steps ({self.num_steps}) with timestep_sampler {self.timestep_sampler!r} (K larger than the step grid)")
        if self.weighting in DEPRECATED_WEIGHTINGS:
            warnings.warn(f"config key 'weighting': {self.weighting!r} is deprecated, use "
                          f"{DEPRECATED_WEIGHTINGS[self.weighting]!r} (same meaning; AWM's 't' is 't_linear')",
                          DeprecationWarning, stacklevel=2)
        if self.timestep_sampler == "grid_strata":
            last = self.num_steps if self.timestep_last_step is None else self.timestep_last_step
            _require(isinstance(self.timestep_first_step, int) and 0 <= self.timestep_first_step < self.num_steps,
                     "timestep_first_step", self.timestep_first_step, f"an int in [0, num_steps = {self.num_steps})")
            _require(isinstance(last, int) and self.timestep_first_step < last <= self.num_steps,
                     "timestep_last_step", self.timestep_last_step,
                     f"none or an int in (timestep_first_step, num_steps] = ({self.timestep_first_step}, {self.num_steps}]")
            _require(self.draws_per_sample <= last - self.timestep_first_step, "draws_per_sample", self.draws_per_sample,
                     f"<= {last - self.timestep_first_step}, the grid steps that 'grid_strata' cuts into strata")
        if self.anchor_beta > 0:
            _require(self.estimator == "elbo", "anchor_beta", self.anchor_beta,
                     "0 with estimator 'trajectory' (the anchor KL is taken at the ELBO's draws)")
        if self.noise_mode == "antithetic":
            _require(self.draws_per_sample % 2 == 0, "draws_per_sample", self.draws_per_sample,
                     "even with noise_mode 'antithetic'")
        if self.timestep_proposal is not None:
            _require(self.estimator == "elbo" and self.timestep_sampler == "grid", "timestep_proposal",
                     self.timestep_proposal, "none unless estimator 'elbo' with timestep_sampler 'grid'")
            _require(_proposal_ok(self.timestep_proposal, self.num_steps), "timestep_proposal", self.timestep_proposal,
                     f"{self.num_steps} comma-separated numbers > 0 (one per positive grid step, num_steps)")
        _require(self.resolution is None or (isinstance(self.resolution, int) and self.resolution > 0),
                 "resolution", self.resolution, "none or an int > 0")
        _require(self.frames is None or (isinstance(self.frames, int) and not isinstance(self.frames, bool)
                 and self.frames >= 1 and self.frames % 4 == 1), "frames", self.frames, "none or an int 4k + 1 (1, 5, 9, ...)")
        _require(self.guidance is None or (_finite(self.guidance) and self.guidance > 0), "guidance", self.guidance,
                 "none or a number > 0")
        _require(self.lora_target_modules is None or (isinstance(self.lora_target_modules, str) and any(
                 m.strip() for m in self.lora_target_modules.split(","))), "lora_target_modules",
                 self.lora_target_modules, "none or comma-separated module names such as 'to_q,to_k,to_v'")
        _require(self.shift is None or (_finite(self.shift) and self.shift > 0), "shift", self.shift,
                 "none or a number > 0")
        if self.stop_at is not None:
            _require(_finite(self.stop_at) and 0 < self.stop_at <= 1, "stop_at", self.stop_at, "a number in (0, 1]")
        _require(not (self.resume and self.overwrite), "overwrite", self.overwrite,
                 "false with resume (resume continues the run in output_dir; overwrite deletes it)")
        return self

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; see `elbo-kernels train --help`")
        return cls(**{k: _none(v) if k in OPTIONAL else v for k, v in values.items()})

    @classmethod
    def from_yaml(cls, path) -> "TrainConfig":
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        return cls.from_dict(values)

    def save_yaml(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _proposal_ok(spec, count: int) -> bool:
    try:
        values = [float(v) for v in str(spec).split(",")]
    except ValueError:
        return False
    return len(values) == count and all(_finite(v) and v > 0 for v in values)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def require_known_reward(spec: str) -> None:
    """The reward name (or each name of a weighted "a:0.5,b:0.5" spec) must be registered.

    Checked by the Trainer when it builds the task from the config (a task passed in brings its
    own reward function, and the key is unused)."""
    from ..rewards import REWARDS, is_import_path, parse_weights

    if is_import_path(spec):  # your own reward: imported (and checked) when the task is built
        return
    try:
        names = list(parse_weights(spec)) if ("," in spec or ":" in spec) else [spec]
    except ValueError as error:
        raise ConfigError(f"config key 'reward' has value {spec!r}; allowed: a reward name or a weighted list such "
                          f"as 'pickscore:0.5,jpeg_compressibility:0.5' ({error})") from None
    for name in names:
        _require(name in REWARDS or is_import_path(name), "reward", spec, "one of " + ", ".join(map(repr, REWARDS)) +
                 ", your own as 'package.module:attribute', or a weighted list of them such as "
                 "'pickscore:0.5,jpeg_compressibility:0.5'")


def _none(value):
    return None if isinstance(value, str) and value.lower() in ("none", "null", "") else value


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} has value {value!r}; allowed: {allowed}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --key per config field, with its help and default, in the groups of HELP_GROUPS (deprecated
    keys apart); keys of choices() show their values as {...}, booleans as bare flags (``--resume``, or
    ``--resume false``); a field's "aka" names (``--learning_rate``) are offered as corrections.
    --config FILE loads YAML first."""
    parser.add_argument("--config", help="YAML file of config values (command-line flags override it)")
    starts, allowed = dict(HELP_GROUPS), choices()
    group, deprecated = None, None
    for f in fields(TrainConfig):
        if f.name in starts:
            group = parser.add_argument_group(starts[f.name])
        default = f.default
        help_text = f.metadata.get("help", "")
        target = group
        if f.metadata.get("deprecated"):
            deprecated = deprecated or parser.add_argument_group("deprecated (still accepted)")
            target, help_text = deprecated, f"{help_text}; deprecated: {f.metadata['deprecated']}"
        kind = {bool: _parse_bool, int: int, float: float}.get(type(default), str)
        if f.name == "resume":
            kind = _parse_resume
        if f.name in OPTIONAL:
            kind = str
        extra = {}
        if isinstance(default, bool):
            extra = {"nargs": "?", "const": True}
        elif f.name in allowed:
            extra = {"metavar": choices_metavar(allowed[f.name])}
        shown = str(default).lower() if isinstance(default, bool) or default is None else default
        target.add_argument(f"--{f.name}", dest=f.name, type=kind, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {shown})", **extra)
        hints = getattr(parser, "hints", None)
        if hints is not None:
            hints.update({f"--{name}": f"--{f.name}" for name in f.metadata.get("aka", ())})


def _parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _parse_resume(text: str):
    return RESUME_AUTO if str(text).lower() == RESUME_AUTO else _parse_bool(text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: Dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(TrainConfig.from_yaml(args.config).to_dict())
    names: List[str] = [f.name for f in fields(TrainConfig)]
    overrides = {k: v for k, v in vars(args).items() if k in names}
    for key, kind in (("stop_at", float), ("shift", float), ("resolution", int), ("frames", int), ("guidance", float),
                      ("trajectory_steps", int), ("eval_num_steps", int), ("eval_guidance_scale", float),
                      ("timestep_last_step", int)):
        if key in overrides and _none(overrides[key]) is not None:
            try:
                overrides[key] = kind(overrides[key])
            except ValueError:
                raise ConfigError(f"config key {key!r} has value {overrides[key]!r}; allowed: none or a number") from None
    values.update(overrides)
    return TrainConfig.from_dict(values)
