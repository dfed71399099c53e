"""Reward functions with FlowGRPO's interface: ``reward_fn(images, prompts, metadata) -> (scores, info)``.

``scores`` is a dict of per-image arrays; "avg" is the one the trainer optimises.

Registered names (``get_reward(name)``; ``"a:0.5,b:0.5"`` is the weighted sum, see :func:`multi_score`),
or your own reward as ``"package.module:attribute"`` (:func:`load_reward`):

    digit                   the embedded DigitEval reward judge (no download)
    digit_geneval           the embedded DigitGenEval reward judge (no download; docs/digit_geneval.md)
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

from .images import RewardFn, to_pil, to_uint8_nhwc
from .registry import REWARDS, get_reward, is_import_path, load_reward, multi_score, named_scores, parse_weights
from .remote import AsyncReward, RemoteReward, RemoteRewardError

__all__ = [
    "AsyncReward",
    "REWARDS",
    "RemoteReward",
    "RemoteRewardError",
    "RewardFn",
    "get_reward",
    "is_import_path",
    "load_reward",
    "multi_score",
    "named_scores",
    "parse_weights",
    "to_pil",
    "to_uint8_nhwc",
]
