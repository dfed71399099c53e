"""The reward registry (names, weighted lists, your own ``package.module:attribute``) and the
combinator of weighted rewards; see the package docstring for the names."""

from __future__ import annotations

import inspect
import os
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from .images import RewardFn
from .remote import RemoteReward


def _digit():
    from ..models.digits import reward_fn

    return reward_fn


def _digit_geneval():
    from ..models.digit_geneval import reward_fn

    return reward_fn


def _simple(name: str):
    def factory():
        from . import simple

        return getattr(simple, name)

    return factory


def _clip(cls: str):
    def factory():
        from . import clip_scores

        return getattr(clip_scores, cls)()

    return factory


def _remote(name: str, env: str):
    def factory():
        url = os.environ.get(env)
        if not url:
            raise ValueError(f"reward {name!r} needs the reward server's URL in the environment variable {env} "
                             f"(e.g. {env}=http://127.0.0.1:18085)")
        protocol = os.environ.get("ELBO_KERNELS_REWARD_PROTOCOL", "pickle")
        tuning = {key: _env_number(var, kind) for key, var, kind in (
            ("max_retries", "ELBO_KERNELS_REWARD_RETRIES", int), ("backoff", "ELBO_KERNELS_REWARD_BACKOFF", float),
            ("timeout", "ELBO_KERNELS_REWARD_TIMEOUT", float)) if os.environ.get(var)}
        return RemoteReward(url, name=name, protocol=protocol, **tuning)

    return factory


def _env_number(var: str, kind):
    text = os.environ[var]
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"environment variable {var} must be {'an int' if kind is int else 'a number'}, "
                         f"got {text!r}") from None


REWARDS: Dict[str, Callable[[], RewardFn]] = {
    "digit": _digit,
    "digit_geneval": _digit_geneval,
    "jpeg_compressibility": _simple("jpeg_compressibility"),
    "jpeg_incompressibility": _simple("jpeg_incompressibility"),
    "brightness": _simple("brightness"),
    "pickscore": _clip("PickScore"),
    "clipscore": _clip("ClipScore"),
    "aesthetic": _clip("AestheticScore"),
    "imagereward": _clip("ImageRewardScore"),
    "geneval": _remote("geneval", "ELBO_KERNELS_GENEVAL_URL"),
    "remote": _remote("remote", "ELBO_KERNELS_REWARD_URL"),
}


def is_import_path(spec: str) -> bool:
    """True for "package.module:attribute" (dotted identifiers on both sides of one colon).

    A registered reward name before the colon is a name and a weight ("brightness:x" is a bad
    weight, not the attribute x of a module brightness).
    """
    module, sep, attribute = spec.partition(":")
    dotted = lambda text: bool(text) and all(part.isidentifier() for part in text.split("."))  # noqa: E731
    return bool(sep) and module not in REWARDS and dotted(module) and dotted(attribute)


def parse_weights(spec: str) -> Dict[str, float]:
    """"pickscore:0.5,ocr:0.5" -> {"pickscore": 0.5, "ocr": 0.5}; ValueError names the bad part.

    A part may be an import path, with or without a weight: "pickscore:0.5,my.rewards:dark:0.5".
    """
    weights: Dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if is_import_path(part):
            weights[part] = 1.0
            continue
        name, sep, weight = part.rpartition(":") if part.count(":") > 1 else part.partition(":")
        try:
            weights[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"reward spec {spec!r}: weight {weight!r} of {name!r} is not a number") from None
    return weights


def load_reward(path: str) -> RewardFn:
    """Your own reward from "package.module:attribute" (``--reward`` accepts the same string).

    The attribute may be, as in FlowGRPO's rewards.py:
      - a reward function ``reward_fn(images, prompts, metadata) -> (scores, info)``, where scores
        is an array of one float per image or a dict holding "avg" (and any other per-image arrays);
      - a factory taking no arguments that returns such a function (FlowGRPO's ``jpeg_compressibility()``);
      - a class whose no-argument instance is such a callable.
    ``images`` is a float tensor [N, C, H, W] in [0, 1] (``to_pil`` / ``to_uint8_nhwc`` convert it).
    Returns the function wrapped so that its scores always come back as a dict with "avg".

    Raises:
        ValueError: not of the form "package.module:attribute", or the module or attribute does not
            exist (the message says which). TypeError: the attribute is not callable, a factory
            needs arguments, or a factory or class does not produce a callable.
    """
    import importlib
    import inspect

    if not isinstance(path, str) or not is_import_path(path):
        raise ValueError(f"reward must be a registered name or 'package.module:attribute', got {path!r}")
    module_name, _, attribute = path.partition(":")
    searched = _search_current_directory()
    importlib.invalidate_caches()  # a module written since the directory was last listed
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"reward {path!r}: cannot import module {module_name!r} ({error}); looked in the current "
                         f"directory ({searched}), the installed packages and PYTHONPATH") from error
    for name in attribute.split("."):
        if not hasattr(obj, name):
            raise ValueError(f"reward {path!r}: {getattr(obj, '__name__', module_name)!r} has no attribute {name!r}")
        obj = getattr(obj, name)
    if not callable(obj):
        raise TypeError(f"reward {path!r} is a {type(obj).__name__}, not a function, factory or class")
    if inspect.isclass(obj) or _required_arguments(obj) == 0:
        made = obj()
        if not callable(made):
            raise TypeError(f"reward {path!r} is a factory or class, but calling it returned a "
                            f"{type(made).__name__}, not a reward function")
        obj = made
    elif _required_arguments(obj) == 1:
        raise TypeError(f"reward {path!r} takes one required argument: a reward function takes (images, prompts, "
                        f"metadata) and a factory none (wrap a factory that needs e.g. a device in one that doesn't)")
    return multi_score({path: 1.0}, {path: obj})


def _search_current_directory() -> str:
    """Make modules in the current directory importable, as ``python -m`` and pytest do, so that
    ``--reward my_rewards:darkness`` works next to my_rewards.py. Appended to sys.path, after the
    installed packages: a local file never shadows one of them. Returns the directory."""
    import os
    import sys

    here = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path):
        sys.path.append(here)
    return here


def _required_arguments(fn) -> int:
    import inspect

    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: treat as a reward function
        return 3
    return sum(1 for p in parameters
               if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def get_reward(name: str) -> RewardFn:
    """The reward function registered under ``name``, the weighted sum for "a:w1,b:w2", or your own
    reward for "package.module:attribute" (:func:`load_reward`).

    Raises:
        ValueError: an unknown name (the message lists the known ones) or a bad weight.
        RewardUnavailableError (OSError): a reward's weights are not available (it says how to get them).
    """
    if not isinstance(name, str):
        raise TypeError(f"reward name must be a str, got {type(name).__name__}")
    if is_import_path(name):
        return load_reward(name)
    if "," in name or ":" in name:
        return multi_score(parse_weights(name))
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(map(repr, REWARDS))} "
                         f"or a weighted list such as 'pickscore:0.5,jpeg_compressibility:0.5'")
    return REWARDS[name]()


def _accepts(fn: Callable, keyword: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def multi_score(weights: Mapping[str, float], reward_fns: Optional[Mapping[str, RewardFn]] = None) -> RewardFn:
    """FlowGRPO's ``multi_score``: several rewards and "avg" = their weighted sum.

    Args:
        weights: reward name -> weight, e.g. {"pickscore": 0.5, "ocr": 0.5}.
        reward_fns: name -> reward function; names not given here come from the registry
            (:func:`elbo_kernels.rewards.get_reward`).
    Returns:
        ``fn(images, prompts, metadata, **kwargs) -> (scores, info)`` where scores holds each
        reward's own score array (float32 [N]) under its name, every extra per-image array it
        returned (e.g. GenEval's "strict_accuracy"), and "avg"; info maps each name to that reward's
        info. Keyword arguments such as FlowGRPO's ``only_strict`` reach the rewards that accept them.
    Raises:
        ValueError: empty weights, non-finite weights, or an unknown reward name.
    """
    if not weights:
        raise ValueError("weights must name at least one reward, got an empty mapping")
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not np.isfinite(weight):
            raise ValueError(f"weights[{name!r}] must be a finite number, got {weight!r}")
    fns: Dict[str, RewardFn] = {}
    for name in weights:
        if reward_fns is not None and name in reward_fns:
            fns[name] = reward_fns[name]
        else:
            fns[name] = get_reward(name)

    def score(images, prompts, metadata=None, **kwargs):
        total: Optional[np.ndarray] = None
        scores: Dict[str, np.ndarray] = {}
        info: Dict[str, dict] = {}
        for name, weight in weights.items():
            fn = fns[name]
            extra = {k: v for k, v in kwargs.items() if _accepts(fn, k)}
            result, reward_info = fn(images, prompts, metadata, **extra)
            values = named_scores(result, name)
            for key, value in result.items() if isinstance(result, Mapping) else ():
                if key not in ("avg", name):
                    scores[key] = np.asarray(value)
            scores[name] = values
            info[name] = reward_info
            total = weight * values if total is None else total + weight * values
        scores["avg"] = total.astype(np.float32)
        return scores, info

    return score


def named_scores(result: Union[Mapping, Sequence, np.ndarray], name: str) -> np.ndarray:
    """float32 [N] scores of one reward's result: its ``name`` entry, else "avg", else the array itself.

    Raises:
        ValueError: a dict with neither key.
    """
    if isinstance(result, Mapping):
        for key in (name, "avg"):
            if key in result:
                return np.asarray(result[key], dtype=np.float32).reshape(-1)
        raise ValueError(f"reward {name!r} returned keys {sorted(result)} without {name!r} or 'avg'")
    return np.asarray(result, dtype=np.float32).reshape(-1)


def score_column(scores, count: int):
    """A reward function's scores["avg"] as a float64 tensor [count] (one score per image, never truncated
    or broadcast); ValueError / TypeError describe what came back instead."""
    import torch

    if not isinstance(scores, dict) or "avg" not in scores:
        raise TypeError(f"the reward function must return (scores, info) with scores a dict holding 'avg'; got "
                        f"scores of type {type(scores).__name__}"
                        + (f" with keys {sorted(scores)[:8]}" if isinstance(scores, dict) else ""))
    values = scores["avg"]
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64)
    try:
        column = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"scores['avg'] is not numeric ({error})") from None
    if column.shape != (count,):
        raise ValueError(f"scores['avg'] has shape {column.shape} for {count} images: one score per image is "
                         f"required (never truncated or broadcast)")
    return torch.from_numpy(column.copy())
