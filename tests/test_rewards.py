"""Specification of the reward functions (elbo_kernels.rewards): built-ins, CLIP-family wrappers, remote client."""

import io
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from elbo_kernels.rewards import REWARDS, RemoteReward, RemoteRewardError, get_reward, multi_score, to_uint8_nhwc
from elbo_kernels.rewards.clip_scores import AestheticScore, ClipScore, PickScore, RewardUnavailableError
from elbo_kernels.rewards.simple import brightness, jpeg_compressibility, jpeg_incompressibility


def images_and_prompts(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), [f"prompt {i}" for i in range(n)]


# ----------------------------------------------------------------------------- built-ins


def flowgrpo_jpeg_kb(images):
    """FlowGRPO's jpeg_incompressibility, transcribed: uint8 NHWC, PIL JPEG quality 95, bytes / 1000."""
    arrays = (images * 255).round().clamp(0, 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1)
    sizes = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000)
    return np.array(sizes)


def test_jpeg_rewards_match_flowgrpo_definition():
    images, prompts = images_and_prompts()
    incompressible, _ = jpeg_incompressibility(images, prompts, None)
    compressible, _ = jpeg_compressibility(images, prompts, None)
    np.testing.assert_allclose(incompressible["jpeg_incompressibility"], flowgrpo_jpeg_kb(images), rtol=1e-6)
    np.testing.assert_allclose(compressible["avg"], -flowgrpo_jpeg_kb(images) / 500, rtol=1e-6)


def test_flat_images_are_more_compressible_than_noise():
    noise, prompts = images_and_prompts(2, size=64)
    flat = torch.full_like(noise, 0.5)
    assert (jpeg_compressibility(flat, prompts)[0]["avg"] > jpeg_compressibility(noise, prompts)[0]["avg"]).all()


def test_brightness_is_mean_pixel_value():
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    np.testing.assert_allclose(brightness(images, ["a", "b"])[0]["avg"], [0.0, 1.0])


def test_image_conversions_accept_tensor_numpy_and_pil():
    images, _ = images_and_prompts(2)
    array = to_uint8_nhwc(images)
    assert array.shape == (2, 16, 16, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(to_uint8_nhwc(array), array)
    np.testing.assert_array_equal(to_uint8_nhwc([Image.fromarray(a) for a in array]), array)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_uint8_nhwc(torch.rand(2, 4, 8, 8))


def test_rewards_check_prompt_count():
    images, _ = images_and_prompts(3)
    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        brightness(images, ["a", "b"])


def test_multi_score_is_the_weighted_sum_with_each_score_kept():
    images, prompts = images_and_prompts()
    combined = multi_score({"brightness": 2.0, "jpeg_compressibility": 0.5})
    scores, info = combined(images, prompts, None, only_strict=True)  # FlowGRPO passes only_strict
    expected = 2.0 * brightness(images, prompts)[0]["avg"] + 0.5 * jpeg_compressibility(images, prompts)[0]["avg"]
    np.testing.assert_allclose(scores["avg"], expected, rtol=1e-6)
    assert set(scores) == {"brightness", "jpeg_compressibility", "avg"} and set(info) == {"brightness",
                                                                                           "jpeg_compressibility"}
    np.testing.assert_allclose(get_reward("brightness:2,jpeg_compressibility:0.5")(images, prompts, None)[0]["avg"],
                               expected, rtol=1e-6)


def test_unknown_reward_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown reward 'nope'.*'jpeg_compressibility'"):
        get_reward("nope")
    with pytest.raises(ValueError, match="weight 'x' of 'brightness'"):
        get_reward("brightness:x")


def test_registry_has_the_builtins_and_wrappers():
    assert {"digit", "jpeg_compressibility", "jpeg_incompressibility", "brightness", "pickscore", "clipscore",
            "aesthetic", "imagereward", "geneval", "remote"} <= set(REWARDS)


def test_remote_rewards_need_their_url(monkeypatch):
    monkeypatch.delenv("ELBO_KERNELS_GENEVAL_URL", raising=False)
    with pytest.raises(ValueError, match="ELBO_KERNELS_GENEVAL_URL"):
        get_reward("geneval")


# ----------------------------------------------------------------------------- CLIP-family wrappers


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIPModel + CLIPProcessor saved locally (save_pretrained layout)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from elbo_kernels.models.sd3 import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny_clip")
    from transformers import CLIPTokenizer

    pipe_dir = save_tiny_pipeline(root / "pipe")  # reuse its byte-level CLIP tokenizer
    tokenizer = CLIPTokenizer.from_pretrained(str(pipe_dir / "tokenizer"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(str(root / "clip"))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(str(root / "clip"))
    return root / "clip"


def reference_similarity(clip_dir, images, prompts):
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(str(clip_dir)), CLIPProcessor.from_pretrained(str(clip_dir))
    pil = [Image.fromarray(a) for a in to_uint8_nhwc(images)]
    inputs = processor(text=prompts, images=pil, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return out.logits_per_image.diagonal().numpy()  # logit_scale.exp() * cos


def test_pickscore_and_clipscore_scale_clip_logits_like_flowgrpo(tiny_clip):
    images, prompts = images_and_prompts()
    logits = reference_similarity(tiny_clip, images, prompts)
    pick, _ = PickScore(str(tiny_clip), str(tiny_clip), device="cpu", batch_size=3)(images, prompts, None)
    clip, _ = ClipScore(str(tiny_clip), device="cpu")(images, prompts, None)
    np.testing.assert_allclose(pick["pickscore"], logits / 26, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clip["avg"], logits / 100, rtol=1e-4, atol=1e-5)


def test_aesthetic_applies_the_mlp_head_to_normalised_image_embeddings(tiny_clip, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from elbo_kernels.rewards.clip_scores import aesthetic_head

    torch.manual_seed(1)
    head = aesthetic_head(8)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, tmp_path / "head.pth")
    images, prompts = images_and_prompts()
    scores, _ = AestheticScore(str(tmp_path / "head.pth"), str(tiny_clip), device="cpu")(images, prompts, None)
    model, processor = CLIPModel.from_pretrained(str(tiny_clip)), CLIPProcessor.from_pretrained(str(tiny_clip))
    pixels = processor(images=[Image.fromarray(a) for a in to_uint8_nhwc(images)], return_tensors="pt")
    with torch.no_grad():
        embeds = model(**pixels, input_ids=torch.zeros(4, 1, dtype=torch.long)).image_embeds
        expected = head.eval()(embeds / embeds.norm(dim=-1, keepdim=True)).squeeze(-1).numpy()
    np.testing.assert_allclose(scores["aesthetic"], expected, rtol=1e-4, atol=1e-5)


def test_missing_local_weights_name_the_reward_and_source(tmp_path):
    with pytest.raises(RewardUnavailableError, match=r"reward 'pickscore' cannot load its processor from '.*nowhere'"):
        PickScore(str(tmp_path / "nowhere"), str(tmp_path / "nowhere"))


def test_aesthetic_without_head_names_the_file_and_variable(monkeypatch):
    monkeypatch.delenv("ELBO_KERNELS_AESTHETIC_HEAD", raising=False)
    with pytest.raises(RewardUnavailableError, match="ELBO_KERNELS_AESTHETIC_HEAD.*sac\\+logos"):
        AestheticScore()


def test_imagereward_without_its_package_says_how_to_install():
    pytest.importorskip("torch")
    try:
        import ImageReward  # noqa: F401
        pytest.skip("ImageReward is installed here")
    except ImportError:
        pass
    with pytest.raises(RewardUnavailableError, match="pip install image-reward"):
        get_reward("imagereward")


def test_pickscore_hub_default_offline_is_a_clear_error(tmp_path):
    code = ("from elbo_kernels.rewards import get_reward\n"
            "try:\n    get_reward('pickscore')\nexcept OSError as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))  # an empty cache, whatever this machine has
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("RewardUnavailableError") and "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in out
    assert "`hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --local-dir DIR`" in out
    assert "HF_HUB_OFFLINE is set" in out


def test_unreachable_hub_fails_without_retrying_and_names_the_hf_command(tmp_path):
    """No HF_HUB_OFFLINE, but the endpoint refuses connections (a closed local port): the error
    comes from the reachability check, not from the hub client's retries."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("from elbo_kernels.rewards import multi_score\n"
            "try:\n    multi_score({'pickscore': 1.0})\nexcept OSError as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_ENDPOINT=f"http://127.0.0.1:{port}")
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("RewardUnavailableError"), out
    assert f"127.0.0.1:{port} is unreachable" in out
    assert "`hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --local-dir DIR`" in out


# ----------------------------------------------------------------------------- remote reward servers


class FakeServer:
    """A real HTTP server on 127.0.0.1 speaking FlowGRPO's pickle protocol (or JSON).

    Scores are metadata["id"] * 0.5; behaviour per request id: fail the first ``fail`` attempts with
    HTTP 500, sleep ``sleep`` seconds on the first attempt, answer ``garbage``, or a fixed ``status``.
    """

    def __init__(self):
        self.fail = 0
        self.sleep = 0.0
        self.garbage = False
        self.status = None
        self.requests = Counter()  # per X-Request-Id
        self.scored = Counter()  # per image id, successful answers only
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request_id = self.headers["X-Request-Id"]
                with server.lock:
                    server.requests[request_id] += 1
                    attempt = server.requests[request_id]
                if server.status is not None:
                    return self.answer(server.status, b"bad request")
                if attempt <= server.fail:
                    return self.answer(500, b"Traceback: model exploded")
                if server.sleep and attempt == 1:
                    time.sleep(server.sleep)
                if server.garbage:
                    return self.answer(200, b"<html>not a pickle</html>")
                is_json = self.headers["Content-Type"] == "application/json"
                data = json.loads(body) if is_json else pickle.loads(body)
                metadata = data["metadata"] if is_json else data["meta_datas"]
                assert len(data["images"]) == len(metadata) == len(data["prompts"])
                ids = [m["id"] for m in metadata]
                with server.lock:
                    server.scored.update(ids)
                response = {"scores": [0.5 * i for i in ids], "rewards": [1.0] * len(ids),
                            "strict_rewards": [0.0] * len(ids), "group_rewards": {"counting": [1.0] * len(ids)},
                            "group_strict_rewards": {}}
                self.answer(200, json.dumps(response).encode() if is_json else pickle.dumps(response))

            def answer(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def batch(n=10):
    images, prompts = images_and_prompts(n, size=8)
    return images, prompts, [{"id": i} for i in range(n)]


def fast(url, **kwargs):
    return RemoteReward(url, **{"name": "geneval", "backoff": 0.01, "timeout": 5.0, "batch_size": 4, **kwargs})


def test_remote_scores_come_back_in_order_batched_each_once(server):
    images, prompts, metadata = batch(10)
    scores, info = fast(server.url)(images, prompts, metadata)
    np.testing.assert_allclose(scores["geneval"], 0.5 * np.arange(10))
    np.testing.assert_allclose(scores["avg"], scores["geneval"])
    assert set(scores) >= {"accuracy", "strict_accuracy", "counting_accuracy"}
    assert len(server.requests) == 3 and info["attempts"] == [1, 1, 1]  # ceil(10 / 4) batches
    assert server.scored == Counter(range(10))


def test_remote_retries_server_errors_then_succeeds(server):
    server.fail = 2
    images, prompts, metadata = batch(6)
    scores, info = fast(server.url, max_retries=3)(images, prompts, metadata)
    np.testing.assert_allclose(scores["geneval"], 0.5 * np.arange(6))
    assert info["attempts"] == [3, 3] and sorted(server.requests.values()) == [3, 3]
    assert server.scored == Counter(range(6))


def test_remote_retries_after_a_timeout_without_scoring_twice(server):
    server.sleep = 1.0
    images, prompts, metadata = batch(3)
    scores, info = fast(server.url, timeout=0.3)(images, prompts, metadata)
    np.testing.assert_allclose(scores["geneval"], [0.0, 0.5, 1.0])  # each rollout once, in order
    assert info["attempts"] == [2]


def test_remote_garbage_answers_end_in_an_explicit_error(server):
    server.garbage = True
    images, prompts, metadata = batch(2)
    with pytest.raises(RemoteRewardError, match=rf"{server.url} failed batch 0 \(2 images\) 3 times.*not valid pickle"):
        fast(server.url, max_retries=2)(images, prompts, metadata)
    assert list(server.requests.values()) == [3]


def test_remote_persistent_500_names_url_and_last_error(server):
    server.fail = 100
    images, prompts, metadata = batch(2)
    with pytest.raises(RemoteRewardError, match="last error: HTTP 500: Traceback: model exploded"):
        fast(server.url, max_retries=1)(images, prompts, metadata)


def test_remote_client_errors_are_not_retried(server):
    server.status = 400
    images, prompts, metadata = batch(2)
    with pytest.raises(RemoteRewardError, match="refused batch 0 .* HTTP 400"):
        fast(server.url, max_retries=3)(images, prompts, metadata)
    assert list(server.requests.values()) == [1]


def test_remote_unreachable_server_is_named():
    s = FakeServer()
    url = s.url
    s.close()
    images, prompts, metadata = batch(1)
    with pytest.raises(RemoteRewardError, match=rf"reward server {url} failed"):
        fast(url, max_retries=1)(images, prompts, metadata)


def test_remote_json_protocol(server):
    images, prompts, metadata = batch(5)
    scores, _ = fast(server.url, protocol="json")(images, prompts, metadata)
    np.testing.assert_allclose(scores["geneval"], 0.5 * np.arange(5))


def test_submit_scores_in_the_background(server):
    server.sleep = 0.4
    reward = fast(server.url, batch_size=64)
    images, prompts, metadata = batch(4)
    start = time.perf_counter()
    futures = [reward.submit(images, prompts, metadata) for _ in range(2)]
    assert time.perf_counter() - start < 0.2  # returns at once
    results = [f.result(timeout=10) for f in futures]
    assert time.perf_counter() - start < 0.75  # the two requests overlapped
    for scores, _ in results:
        np.testing.assert_allclose(scores["geneval"], 0.5 * np.arange(4))
    reward.close()


@pytest.mark.parametrize("kwargs, match", [
    (dict(url="127.0.0.1:18085"), "url must be an http"),
    (dict(protocol="grpc"), "protocol must be one of"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(timeout=0), "timeout must be a finite number > 0"),
])
def test_remote_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RemoteReward(**{"url": "http://127.0.0.1:1", **kwargs})
