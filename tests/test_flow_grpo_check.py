"""The patch-verification command (elbo_kernels.integrations.flow_grpo_check) on a stand-in FlowGRPO checkout.

FlowGRPO's code cannot be fetched in CI, so the checkout is written here from FlowGRPO's math
(tests/flowgrpo_reference.py): the package's sde_step_with_logprob, the script's
compute_log_prob and an ml_collections config. The command must pass against it, and fail when
the reference takes its gradient differently (both CFG branches through the gradient).
"""

import json
import textwrap

import pytest

from elbo_kernels.integrations import flow_grpo_check
from elbo_kernels.models.sd3 import save_tiny_pipeline

STEP = '''
import torch
from flowgrpo_reference import flowgrpo_sde_step
from diffusers.utils.torch_utils import randn_tensor


def sde_step_with_logprob(self, model_output, timestep, sample, noise_level=0.7, prev_sample=None, generator=None):
    noise = None
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=torch.float32)
    return flowgrpo_sde_step(self, model_output, timestep, sample, noise_level, prev_sample=prev_sample, noise=noise)
'''

SCRIPT = '''
from flowgrpo_reference import flowgrpo_compute_log_prob


def compute_log_prob(transformer, pipeline, sample, j, embeds, pooled_embeds, config):
    {body}
'''

CONFIG = '''
import ml_collections


def tiny():
    config = ml_collections.ConfigDict()
    config.pretrained = ml_collections.ConfigDict(dict(model="{model}"))
    config.resolution = 16
    config.use_lora = True
    config.sample = ml_collections.ConfigDict(dict(num_steps=3, noise_level=0.7, guidance_scale=4.5))
    config.train = ml_collections.ConfigDict(dict(cfg=True, timestep_fraction=1.0, lora_path=None))
    return config
'''

FLOWGRPO = ("return flowgrpo_compute_log_prob(transformer, pipeline.scheduler, sample, j, embeds, pooled_embeds, "
            "config.train.cfg, config.sample.guidance_scale, config.sample.noise_level)")
BOTH_BRANCHES = '''import torch
    from flowgrpo_reference import flowgrpo_sde_step
    out = transformer(hidden_states=torch.cat([sample["latents"][:, j]] * 2),
                      timestep=torch.cat([sample["timesteps"][:, j]] * 2), encoder_hidden_states=embeds,
                      pooled_projections=pooled_embeds, return_dict=False)[0]
    uncond, text = out.chunk(2)
    v = uncond + config.sample.guidance_scale * (text - uncond)
    return flowgrpo_sde_step(pipeline.scheduler, v.float(), sample["timesteps"][:, j], sample["latents"][:, j],
                             config.sample.noise_level, prev_sample=sample["next_latents"][:, j].float())'''


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow_grpo")
    model = save_tiny_pipeline(root / "tiny_sd3")
    (root / "flow_grpo" / "diffusers_patch").mkdir(parents=True)
    (root / "flow_grpo" / "__init__.py").write_text("")
    (root / "flow_grpo" / "diffusers_patch" / "__init__.py").write_text("")
    (root / "flow_grpo" / "diffusers_patch" / "sd3_sde_with_logprob.py").write_text(STEP)
    (root / "scripts").mkdir()
    (root / "scripts" / "train_sd3.py").write_text(textwrap.dedent(SCRIPT).format(body=FLOWGRPO))
    (root / "scripts" / "train_sd3_both_branches.py").write_text(SCRIPT.format(body=BOTH_BRANCHES))
    (root / "config").mkdir()
    (root / "config" / "grpo.py").write_text(CONFIG.format(model=model))
    return root


def test_check_passes_when_the_drop_in_reproduces_flowgrpo(checkout, tmp_path, capsys):
    out = tmp_path / "check.json"
    code = flow_grpo_check.main(["--flow-grpo", str(checkout), "--config", "config/grpo.py:tiny", "--device", "cpu",
                                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert [r["j"] for r in result["trajectory"]] == [0, 1, 2] and result["cfg"] is True
    assert all(r["gradient"] < 1e-4 and r["cosine"] > 0.9999 for r in result["trajectory"])
    assert result["elbo"]["ok"] and result["elbo"]["gradient_norm"] > 0
    assert "PASS" in printed


@pytest.mark.slow
def test_check_fails_against_a_reference_with_another_cfg_gradient(checkout, capsys):
    code = flow_grpo_check.main(["--flow_grpo", str(checkout), "--config", "config/grpo.py:tiny", "--device", "cpu",
                                 "--reference_script", str(checkout / "scripts" / "train_sd3_both_branches.py")])
    printed = capsys.readouterr().out
    assert code == 1 and "MISMATCH" in printed and "FAIL" in printed


@pytest.mark.parametrize("flags,message", [
    (["--flow_grpo", "{tmp}/missing"], "--flow_grpo {tmp}/missing: no such directory"),
    (["--flow_grpo", "{tmp}"], "is not a FlowGRPO checkout"),
    (["--flow_grpo", "{checkout}", "--config", "config/grpo.py"], "--config must be path.py:function"),
    (["--flow_grpo", "{checkout}", "--config", "config/nope.py:tiny"], "--config file"),
    (["--flow-grpo", "{checkout}", "--reference-script", "{tmp}/nope.py"], "--reference_script {tmp}/nope.py does not"),
])
def test_a_wrong_path_is_one_line_and_exit_code_2_not_a_failed_check(checkout, tmp_path, capsys, flags, message):
    fill = lambda text: text.format(tmp=tmp_path, checkout=checkout)  # noqa: E731
    flags = [fill(f) for f in flags] + ([] if "--config" in flags else ["--config", "config/grpo.py:tiny"])
    assert flow_grpo_check.main(flags) == flow_grpo_check.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fill(message) in err and "Traceback" not in err


def test_help_says_what_it_checks_prints_and_its_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        flow_grpo_check.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for text in ("What it checks", "What it prints", "Exit codes:", "0  PASS", "1  FAIL", "2  usage", "--flow_grpo",
                 "--reference_script", "--num_steps"):
        assert text in out, text
