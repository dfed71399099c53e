"""Rewards served over HTTP, compatible with the reward servers FlowGRPO users run.

Wire format ("pickle", FlowGRPO's reward-server): one POST per batch to the server's URL with
the body ``pickle.dumps(request)``,

    request  = {"images": [JPEG bytes per image], "prompts": [str], "meta_datas": [dict],
                "only_strict": bool}
    response = pickle of a dict, either GenEval's
               {"scores": [N], "rewards": [N], "strict_rewards": [N],
                "group_rewards": {tag: [N]}, "group_strict_rewards": {tag: [N]}}
               or a scorer's {"outputs": [N]} (the DeQA / UnifiedReward servers).

The GenEval server reads images, meta_datas and only_strict; the others read what they
need and ignore the rest, so one request shape serves all of them. Errors come back as
HTTP 500 with a traceback body.

"json" is the same exchange as JSON (images as base64 JPEG strings, "metadata" for
"meta_datas") for servers you write yourself.

A pickle response is decoded by a restricted unpickler (elbo_kernels/_safe_load.py) that builds
only plain data -- dicts, lists, tuples, numbers, strings, bytes, numpy arrays and scalars, all
that FlowGRPO's servers send -- so a server cannot run code in the trainer: a response naming any
other callable fails at once (not retried) with a RemoteRewardError that says so, and nothing it
names is called. ``ELBO_KERNELS_TRUST_PICKLES=1`` lifts the restriction for servers you control.

Every batch carries an ``X-Request-Id`` header (the same on retries) and ``X-Attempt``.
Failures (connection errors, timeouts, HTTP 5xx / 408 / 429, responses that do not parse
or have the wrong length) are retried with exponential backoff; after ``max_retries``
retries :class:`RemoteRewardError` names the URL, the batch and the last error. Other
HTTP 4xx fail at once. Batches come back in order, each scored exactly once.

``submit(images, prompts, metadata)`` returns a ``concurrent.futures.Future`` from a thread
pool, so rewards are computed while the next rollout runs; :class:`AsyncReward` gives any
reward function the same ``submit``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import socket
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._safe_load import UnsafePickleError, loads_plain
from .images import check_batch, to_uint8_nhwc

PROTOCOLS = ("pickle", "json")
RETRY_STATUS = (408, 429)


class RemoteRewardError(RuntimeError):
    """A reward server did not produce a valid answer after every retry (or refused the request)."""


class _BadResponse(ValueError):
    """The server answered, but not with scores for this batch (retried)."""


class AsyncReward:
    """Any reward function plus ``submit(images, prompts, metadata, **kwargs) -> Future`` on a thread pool."""

    def __init__(self, reward_fn: Callable, max_workers: int = 4):
        if not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
        self.reward_fn = reward_fn
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reward")

    def __call__(self, images, prompts, metadata=None, **kwargs):
        return self.reward_fn(images, prompts, metadata, **kwargs)

    def submit(self, images, prompts, metadata=None, **kwargs) -> Future:
        """Score in the background; ``future.result()`` is ``(scores, info)`` or raises the reward's error.

        Tensors are copied to the CPU first, so the caller may reuse its GPU buffers at once.
        """
        if hasattr(images, "detach"):
            images = images.detach().cpu()
        return self._executor.submit(self.reward_fn, images, list(prompts), metadata, **kwargs)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_jpeg(images, quality: int = 75) -> List[bytes]:
    """JPEG bytes per image (PIL's default quality 75, as FlowGRPO's client sends)."""
    from PIL import Image

    out = []
    for array in to_uint8_nhwc(images):
        buffer = io.BytesIO()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


class RemoteReward(AsyncReward):
    """A reward computed by an HTTP server: ``reward(images, prompts, metadata) -> (scores, info)``."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "remote",
        protocol: str = "pickle",
        batch_size: int = 64,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        only_strict: bool = True,
        jpeg_quality: int = 75,
        max_workers: int = 4,
    ):
        """Args:
            url: the server's endpoint, e.g. "http://127.0.0.1:18085" (GenEval in FlowGRPO's setup).
            name: key of the scores in the result ("geneval", "ocr", ...).
            protocol: "pickle" (FlowGRPO's servers) or "json".
            batch_size: images per request (>= 1).
            timeout: seconds to wait for one response (> 0).
            max_retries: retries per batch after the first attempt (>= 0).
            backoff, backoff_max: sleep backoff * 2**(retry - 1) seconds before each retry, at most backoff_max.
            only_strict: GenEval's flag (strict accuracy only: faster during training).
        Raises:
            ValueError naming the argument for bad values.
        """
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        for key, value, low in (("batch_size", batch_size, 1), ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        for key, value in (("timeout", timeout), ("backoff", backoff), ("backoff_max", backoff_max)):
            low = "> 0" if key == "timeout" else ">= 0"
            bad = not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            if bad or (low == "> 0" and value == 0):
                raise ValueError(f"{key} must be a finite number {low}, got {value!r}")
        super().__init__(self.score, max_workers=max_workers)
        self.url = url
        self.name = name
        self.protocol = protocol
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.only_strict = only_strict
        self.jpeg_quality = jpeg_quality

    # --- one call -----------------------------------------------------------------------------------
    def score(self, images, prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None,
              only_strict: Optional[bool] = None) -> Tuple[Dict[str, np.ndarray], dict]:
        """Score all images, batch by batch, in order.

        Args:
            images: [N, C, H, W] in [0, 1] (or NHWC uint8 / PIL list).
            prompts: N prompts. metadata: N dicts (GenEval's per-prompt metadata) or None.
            only_strict: overrides the constructor's flag for this call (FlowGRPO passes it).
        Returns:
            scores: {name: float32 [N], "avg": same, and per-image extras: "accuracy",
            "strict_accuracy", "<tag>_accuracy", "<tag>_strict_accuracy" from GenEval};
            info: {"attempts": [per batch], "seconds": float}.
        Raises:
            RemoteRewardError: a batch failed after every retry, or the server refused it (HTTP 4xx).
        """
        n = check_batch(images, prompts, metadata)
        metadata = [{} for _ in range(n)] if metadata is None else list(metadata)
        strict = self.only_strict if only_strict is None else bool(only_strict)
        jpegs = encode_jpeg(images, self.jpeg_quality)
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        parts: List[Dict[str, np.ndarray]] = []
        attempts = []
        for index, lo in enumerate(range(0, n, self.batch_size)):
            hi = min(lo + self.batch_size, n)
            body = self._encode(jpegs[lo:hi], list(prompts[lo:hi]), metadata[lo:hi], strict)
            result, tries = self._post_with_retries(body, f"{request_id}-{index}", hi - lo, index)
            parts.append(result)
            attempts.append(tries)
        keys = [k for k in parts[0] if all(k in p for p in parts)]
        scores = {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in keys}
        scores[self.name] = scores.pop("_scores")
        scores["avg"] = scores[self.name].copy()
        return scores, {"attempts": attempts, "seconds": time.perf_counter() - start}

    def __call__(self, images, prompts, metadata=None, only_strict: Optional[bool] = None):
        return self.score(images, prompts, metadata, only_strict=only_strict)

    # --- wire format --------------------------------------------------------------------------------
    def _encode(self, jpegs: List[bytes], prompts: List[str], metadata: List[dict], only_strict: bool) -> bytes:
        if self.protocol == "pickle":
            return pickle.dumps({"images": jpegs, "prompts": prompts, "meta_datas": metadata,
                                 "only_strict": only_strict})
        return json.dumps({"images": [base64.b64encode(j).decode("ascii") for j in jpegs], "prompts": prompts,
                           "metadata": metadata, "only_strict": only_strict}).encode()

    def _decode(self, payload: bytes, size: int) -> Dict[str, np.ndarray]:
        try:
            if self.protocol == "pickle":
                response = loads_plain(payload, source=f"the response of reward server {self.url}")
            else:
                response = json.loads(payload)
        except UnsafePickleError:
            raise  # a hostile answer is not a transient failure: never retried
        except Exception as error:  # noqa: BLE001 - any unparsable body is a bad response
            raise _BadResponse(f"response is not valid {self.protocol} ({type(error).__name__}: "
                               f"{payload[:80]!r})") from error
        if not isinstance(response, dict):
            raise _BadResponse(f"response is a {type(response).__name__}, expected a dict")
        key = "scores" if "scores" in response else "outputs" if "outputs" in response else None
        if key is None:
            raise _BadResponse(f"response has keys {sorted(response)[:8]}, expected 'scores' or 'outputs'")
        out = {"_scores": self._column(response[key], size, key)}
        extras = {"rewards": "accuracy", "strict_rewards": "strict_accuracy"}
        for source, target in extras.items():
            if source in response and _is_column(response[source], size):
                out[target] = self._column(response[source], size, source)
        for group, suffix in (("group_rewards", "_accuracy"), ("group_strict_rewards", "_strict_accuracy")):
            for tag, values in (response.get(group) or {}).items():
                if _is_column(values, size):
                    out[f"{tag}{suffix}"] = self._column(values, size, f"{group}[{tag!r}]")
        return out

    @staticmethod
    def _column(values, size: int, key: str) -> np.ndarray:
        try:
            array = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as error:
            raise _BadResponse(f"response[{key!r}] is not numeric") from error
        if array.shape[0] != size:
            raise _BadResponse(f"response[{key!r}] has {array.shape[0]} values for {size} images")
        if not np.isfinite(array).all():
            raise _BadResponse(f"response[{key!r}] holds non-finite values")
        return array

    # --- transport ----------------------------------------------------------------------------------
    def _post_with_retries(self, body: bytes, request_id: str, size: int, index: int):
        last = None
        for attempt in range(1, self.max_retries + 2):
            if attempt > 1:
                time.sleep(min(self.backoff * 2 ** (attempt - 2), self.backoff_max))
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/octet-stream" if self.protocol == "pickle" else "application/json",
                "X-Request-Id": request_id,
                "X-Attempt": str(attempt),
            })
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                return self._decode(payload, size), attempt
            except urllib.error.HTTPError as error:
                detail = error.read()[-300:].decode("utf-8", "replace")
                if error.code < 500 and error.code not in RETRY_STATUS:
                    raise RemoteRewardError(f"reward server {self.url} refused batch {index} ({size} images) with "
                                            f"HTTP {error.code}: {detail}") from error
                last = f"HTTP {error.code}: {detail}"
            except UnsafePickleError as error:
                raise RemoteRewardError(f"reward server {self.url} answered batch {index} with a pickle that is not "
                                        f"plain data; nothing was run: {error}") from None
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, _BadResponse) as error:
                last = f"{type(error).__name__}: {getattr(error, 'reason', None) or error}"
        raise RemoteRewardError(
            f"reward server {self.url} failed batch {index} ({size} images) {self.max_retries + 1} times "
            f"(timeout {self.timeout:g}s each); last error: {last}"
        )


def _is_column(values, size: int) -> bool:
    try:
        return len(values) == size
    except TypeError:
        return False
