"""The patch verifiers of DiffusionNFT and AWM (integrations/diffusion_nft_check.py, awm_check.py).

Their code is not part of this repository, so each checkout is a stand-in written here: a
``scripts/`` file whose loss lines (between the markers the verifiers look for) compute the
losses from the papers' math (tests/flow_family_reference.py), an ml_collections config, and
the tiny random SD3. The verifiers must pass against it, take the lines from ``git show HEAD:``
once the script is patched, and fail against a deliberately wrong reference.
"""

import json
import subprocess
import textwrap

import pytest

from elbo_kernels.integrations import awm_check, diffusion_nft_check
from elbo_kernels.models.sd3 import save_tiny_pipeline

NFT_SCRIPT = '''
def main():
    for j_idx in range(1):
        # Policy Gradient Loss (stand-in: the paper's math, tests/flow_family_reference.py)
        advantages_clip = torch.clamp(train_sample_batch["advantages"][:, j_idx], -config.train.adv_clip_max,
                                      config.train.adv_clip_max)
        r = torch.clamp(advantages_clip / config.train.adv_clip_max / 2.0 + 0.5, 0, 1)
        # positive_prediction = config.beta * forward_prediction + ... : computed by the reference below
        from flow_family_reference import nft_reference_loss
        loss, policy, kl = nft_reference_loss(forward_prediction, old_prediction, ref_forward_prediction, x0, noise, t,
                                              {weight}, g=config.beta, adv_clip_max=config.train.adv_clip_max,
                                              kl_weight=config.train.beta)
        loss_terms["policy_loss"] = policy.detach()
        loss_terms["unweighted_policy_loss"] = policy.detach() / config.train.adv_clip_max
        loss_terms["kl_div_loss"] = kl.detach()
        loss_terms["kl_div"] = kl.detach()
        loss_terms["total_loss"] = loss.detach()
'''

AWM_SCRIPT = '''
def compute_log_prob_awm(transformer, pipeline, sample, timestep, embeds, pooled_embeds, config, noised_latents,
                         clean_latents, random_noise, weighting="Uniform"):
    from flow_family_reference import awm_log_prob
    v = transformer(hidden_states=noised_latents, timestep=timestep.view(-1) * 1000, encoder_hidden_states=embeds,
                    pooled_projections=pooled_embeds, return_dict=False)[0].double()
    t = timestep.view(-1).double()
    std_dev_t = torch.sqrt(t / (1 - torch.clamp(t, 0, 0.99))).view(-1, 1, 1, 1) * 0.7
    return awm_log_prob(v, clean_latents.double(), random_noise.double(), t, weighting, config.train.ghuber_power), v, std_dev_t


def main():
    for i in range(1):
        if True:
            # grpo logic (stand-in: the paper's math, tests/flow_family_reference.py)
            from flow_family_reference import awm_reference_loss
            # unclipped_loss = -advantages * ratio: inside the reference
            loss, policy_loss, kl_loss, ema_kl_loss, clipfrac = awm_reference_loss(
                sample["model_output"].flatten(0, 1), sample["model_output_ref"].flatten(0, 1),
                sample["model_output_ema"].flatten(0, 1), sample["clean_latents"].double(),
                sample["train_random_noise"].double(), sample["timesteps"].double(), sample["advantages"][:, 0],
                sample["old_log_probs"].reshape(-1), weighting=config.train.weighting, power=config.train.ghuber_power,
                clip_range=config.train.clip_range, adv_clip_max=config.train.adv_clip_max,
                advantage_max={advantage_max}, beta=config.train.beta, kl_weight=config.train.kl_weight,
                ema_beta=config.train.ema_beta, kl_ema_weight=config.train.kl_ema_weight)
            info["clipfrac"].append(clipfrac)
            info["policy_loss"].append(policy_loss)
            info["kl_loss"].append(kl_loss)
            info["ema_kl_loss"].append(ema_kl_loss)
            info["loss"].append(loss)
'''

CONFIG = '''
import ml_collections


def tiny():
    config = ml_collections.ConfigDict()
    config.pretrained = ml_collections.ConfigDict(dict(model="{model}"))
    config.resolution = 16
    config.beta = 0.5
    config.sample = ml_collections.ConfigDict(dict(num_steps=6))
    config.train = ml_collections.ConfigDict(dict(
        beta=0.01, adv_clip_max=5.0, train_timesteps=3, cfg=False, weighting="ghuber", ghuber_power=0.25,
        advantage_max=1, loss_type="exp_first", clip_range=1e-3, kl_weight="ELBO", ema_beta=0.5,
        kl_ema_weight="Uniform"))
    return config
'''


def make_checkout(root, model, script, text):
    (root / "flow_grpo").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "config").mkdir()
    (root / "scripts" / script).write_text(text)
    (root / "config" / "tiny.py").write_text(CONFIG.format(model=model))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd3"))


def run(module, flag, root, *extra):
    return module.main([flag, str(root), "--config", "config/tiny.py:tiny", "--device", "cpu", *extra])


def test_nft_check_passes_when_nft_loss_reproduces_the_scripts_lines(model, tmp_path, capsys):
    root = make_checkout(tmp_path / "nft", model, "train_nft_sd3.py", NFT_SCRIPT.format(weight="r"))
    out = tmp_path / "nft.json"
    assert run(diffusion_nft_check, "--diffusion-nft", root, "--json", str(out)) == 0, capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["terms"]) == {"policy_loss", "unweighted_policy_loss", "kl_div_loss", "kl_div"}
    assert result["gradient"] < 1e-4 and result["cosine"] > 0.9999 and result["gradient_norm"] > 0
    assert "PASS" in capsys.readouterr().out


def test_nft_check_takes_the_lines_from_git_head_once_the_script_is_patched(model, tmp_path, capsys):
    root = make_checkout(tmp_path / "nft", model, "train_nft_sd3.py", NFT_SCRIPT.format(weight="r"))
    git = ["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "unmodified"], check=True)
    (root / "scripts" / "train_nft_sd3.py").write_text("from elbo_kernels.integrations.diffusion_nft import nft_loss\n")
    assert run(diffusion_nft_check, "--diffusion-nft", root) == 0
    assert "git HEAD:scripts/train_nft_sd3.py" in capsys.readouterr().out


def test_nft_check_fails_against_a_reference_with_the_advantage_reversed(model, tmp_path, capsys):
    root = make_checkout(tmp_path / "nft", model, "train_nft_sd3.py", NFT_SCRIPT.format(weight="r"))
    wrong = tmp_path / "wrong_train_nft_sd3.py"
    wrong.write_text(NFT_SCRIPT.format(weight="1 - r"))
    assert run(diffusion_nft_check, "--diffusion-nft", root, "--reference-script", str(wrong)) == 1
    assert "FAIL: MISMATCH" in capsys.readouterr().out


def test_awm_check_passes_when_awm_loss_reproduces_the_scripts_lines(model, tmp_path, capsys):
    root = make_checkout(tmp_path / "awm", model, "train_sd3_awm.py", AWM_SCRIPT.format(advantage_max="1"))
    out = tmp_path / "awm.json"
    assert run(awm_check, "--awm", root, "--json", str(out)) == 0, capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["terms"]) == {"clipfrac", "policy_loss", "kl_loss", "ema_kl_loss"}
    assert result["gradient"] < 1e-4 and result["gradient_norm"] > 0


def test_awm_check_fails_against_a_reference_without_the_advantage_rescaling(model, tmp_path, capsys):
    root = make_checkout(tmp_path / "awm", model, "train_sd3_awm.py", AWM_SCRIPT.format(advantage_max="1"))
    wrong = tmp_path / "wrong_train_sd3_awm.py"
    wrong.write_text(AWM_SCRIPT.format(advantage_max="None"))
    assert run(awm_check, "--awm", root, "--reference-script", str(wrong)) == 1
    assert "FAIL: MISMATCH" in capsys.readouterr().out


def test_checks_name_a_checkout_without_the_scripts_lines(model, tmp_path):
    root = make_checkout(tmp_path / "nft", model, "train_nft_sd3.py", textwrap.dedent("x = 1\n"))
    with pytest.raises(RuntimeError, match="no longer has|git show HEAD"):
        run(diffusion_nft_check, "--diffusion-nft", root)
    with pytest.raises(FileNotFoundError, match="is not the expected checkout"):
        run(awm_check, "--awm", tmp_path)
