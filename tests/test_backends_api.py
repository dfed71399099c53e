"""The public API on every usable backend agrees with the torch reference backend.

The op-level tests (test_op_*.py) check each kernel on every backend; these check
the composition users call, for every objective x weighting x kl, forward and gradient.
"""

import itertools

import pytest
import torch

import elbo_kernels as ek
from test_policy_loss import batch

FUSED = [name for name in ("cpu", "triton") if ek.available_backends()[name]]
COMBOS = list(itertools.product(ek.OBJECTIVES, ek.WEIGHTINGS, list(ek.KL_ESTIMATORS) + [None]))


def loss_and_grad(backend, dtype, objective, weighting, kl, k=2):
    v0, v_old, v_ref, x0, eps, t, adv = batch(n=4, shape=(3, 5), b=4 // k, objective=objective, dtype=dtype)
    v = v0.clone().requires_grad_()
    loss, stats = ek.policy_loss(v, v_old, v_ref, x0, eps, t, adv, objective=objective, weighting=weighting,
                                 kl=kl, beta=0.3, clip_range=0.02, nft_beta=0.7, backend=backend)
    loss.backward()
    return loss.detach(), v.grad, stats


def test_at_least_one_fused_backend_is_usable_on_cpu():
    assert "cpu" in FUSED, ek.available_backends()["cpu"].reason


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("objective,weighting,kl", COMBOS)
def test_policy_loss_matches_torch_backend_in_float64(backend, objective, weighting, kl):
    ref_loss, ref_grad, ref_stats = loss_and_grad("torch", torch.float64, objective, weighting, kl)
    loss, grad, stats = loss_and_grad(backend, torch.float64, objective, weighting, kl)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-12)
    for key in ref_stats:
        torch.testing.assert_close(stats[key], ref_stats[key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("objective", ["pepg", "grpo", "nft"])
def test_low_precision_error_is_at_most_twice_torchs(backend, dtype, objective):
    """flash-attention's rule: both against the float64 result of the same rounded inputs."""
    exact_loss, exact_grad, _ = loss_and_grad("torch", torch.float64, objective, "adaptive", "girsanov")
    v0, v_old, v_ref, x0, eps, t, adv = batch(n=4, shape=(3, 5), b=2, objective=objective)
    rounded = [x.to(dtype).double() for x in (v0, v_old, v_ref, x0, eps)]

    def run(tensors, backend):
        v = tensors[0].clone().requires_grad_()
        loss, _ = ek.policy_loss(v, *tensors[1:], t, adv, objective=objective, backend=backend)
        loss.backward()
        return loss.double(), v.grad.double()

    exact = run(rounded, "torch")
    low = [x.to(dtype) for x in rounded]
    torch_low = run(low, "torch")
    fused_low = run(low, backend)
    for i in range(2):
        floor = 1e-6 * exact[i].abs().max()
        assert (fused_low[i] - exact[i]).abs().max() <= 2 * (torch_low[i] - exact[i]).abs().max() + floor


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("weighting", list(ek.WEIGHTINGS))
def test_elbo_and_noise_seed_match_torch_backend(backend, weighting):
    v, _, _, x0, _, t, _ = batch(n=4, shape=(2, 3, 2), b=2, dtype=torch.float32)
    seed = ek.NoiseSeed(7, 123)
    torch.testing.assert_close(ek.elbo(v, x0, seed, t, weighting=weighting, backend=backend),
                               ek.elbo(v, x0, seed, t, weighting=weighting, backend="torch"), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(ek.noising(x0, t, seed, backend=backend), ek.noising(x0, t, seed, backend="torch"),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_sde_step_matches_torch_backend(backend, sde_type):
    g = torch.Generator().manual_seed(0)
    v, x, x_prev = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    sigma = torch.tensor([1.0, 0.7, 0.4])
    outputs = []
    for name in ("torch", backend):
        vv = v.clone().requires_grad_()
        lp, mean, std = ek.sde_step_log_prob(vv, x, x_prev, sigma, sigma - 0.1, sde_type=sde_type,
                                             sigma_max=0.9, backend=name)
        (lp.sum() + mean.sum()).backward()
        outputs.append((lp, mean, std, vv.grad))
    for a, b in zip(*outputs):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)


def test_auto_picks_the_cpu_extension_for_cpu_tensors():
    assert ek.backends.resolve_backend("auto", torch.device("cpu")) == "cpu"
