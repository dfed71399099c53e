"""Reward functions with FlowGRPO's interface: ``reward_fn(images, prompts, metadata) -> (scores, info)``.

``scores`` is a dict of per-image arrays; "avg" is the one the trainer optimises.

Registered names (``get_reward(name)``; ``"a:0.5,b:0.5"`` is the weighted sum, see :func:`multi_score`):

    digit                   the embedded DigitEval reward judge (no download)
    jpeg_compressibility    -(JPEG kB) / 500, FlowGRPO's definition (no download)
    jpeg_incompressibility  JPEG kB (no download)
    brightness              mean pixel value (no download; a toy for tests)
    pickscore, clipscore,   CLIP-family scorers (hub id or local path; see rewards/clip_scores.py)
    aesthetic, imagereward
    geneval                 FlowGRPO's GenEval reward server at $ELBO_KERNELS_GENEVAL_URL
    remote                  any reward server at $ELBO_KERNELS_REWARD_URL
                            ($ELBO_KERNELS_REWARD_PROTOCOL: pickle | json)

Both servers' retries: $ELBO_KERNELS_REWARD_RETRIES (default 5), $ELBO_KERNELS_REWARD_BACKOFF
(seconds before the first retry, doubling; default 1) and $ELBO_KERNELS_REWARD_TIMEOUT (seconds
per request; default 120).
"""

from __future__ import annotations

import os
from typing import Callable, Dict

from .images import RewardFn, multi_score, named_scores, to_pil, to_uint8_nhwc
from .remote import AsyncReward, RemoteReward, RemoteRewardError


def _digit():
    from ..models.digits import reward_fn

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


def parse_weights(spec: str) -> Dict[str, float]:
    """"pickscore:0.5,ocr:0.5" -> {"pickscore": 0.5, "ocr": 0.5}; ValueError names the bad part."""
    weights: Dict[str, float] = {}
    for part in spec.split(","):
        name, sep, weight = part.strip().partition(":")
        try:
            weights[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"reward spec {spec!r}: weight {weight!r} of {name!r} is not a number") from None
    return weights


def get_reward(name: str) -> RewardFn:
    """The reward function registered under ``name``, or the weighted sum for "a:w1,b:w2".

    Raises:
        ValueError: an unknown name (the message lists the known ones) or a bad weight.
        RewardUnavailableError (OSError): a reward's weights are not available (it says how to get them).
    """
    if not isinstance(name, str):
        raise TypeError(f"reward name must be a str, got {type(name).__name__}")
    if "," in name or ":" in name:
        return multi_score(parse_weights(name))
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; expected one of {', '.join(map(repr, REWARDS))} "
                         f"or a weighted list such as 'pickscore:0.5,jpeg_compressibility:0.5'")
    return REWARDS[name]()


__all__ = [
    "AsyncReward",
    "REWARDS",
    "RemoteReward",
    "RemoteRewardError",
    "RewardFn",
    "get_reward",
    "multi_score",
    "named_scores",
    "parse_weights",
    "to_pil",
    "to_uint8_nhwc",
]
