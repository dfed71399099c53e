"""Property-based fuzzing of the public ops: awkward shapes, dtypes, strides and extreme values.

Properties, for every generated input:
- the op returns, or raises ValueError / TypeError (never another exception, never a crash);
- where the float64 evaluation of the same (already rounded) inputs is finite in the output's
  dtype, the op's outputs are finite (no NaN where the math has none);
- the "cpu" backend agrees with "torch": its error against the float64 evaluation is at most
  twice torch's own error in the input dtype, plus 32 ulps of the output's scale (as
  tests/test_op_*.py); "triton" is checked likewise on a few examples (the
  interpreter is slow);
- both backends raise, or neither does.

Shapes: 1..4 latent dims of sizes 1..4 (D = 1 included), 1..4 rows. Layouts: contiguous,
transposed views, sliced (strided) views. Values: scales from 1e-3 to the dtype's range
(velocities up to ~1e4 in half precision, ~1e15 in float32), t from 1e-6 to exactly 1.
"""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import elbo_kernels as ek

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRITON = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOWED = (ValueError, TypeError)
# Largest velocity scale whose squared residual sums stay finite in the op's accumulation.
MAX_SCALE = {torch.float16: 1e4, torch.bfloat16: 1e15, torch.float32: 1e15, torch.float64: 1e15}


@st.composite
def layouts(draw):
    """(shape [N, *S], layout, dtype, scale)."""
    dims = draw(st.integers(1, 4))
    shape = (draw(st.integers(1, 4)),) + tuple(draw(st.integers(1, 4)) for _ in range(dims))
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, MAX_SCALE[dtype]]))
    return shape, layout, dtype, scale


def make(shape, layout, dtype, scale, generator):
    """A tensor of logical ``shape`` in ``layout``: a transposed or sliced view of a larger base."""
    def randn(size):
        return (torch.randn(size, generator=generator, dtype=torch.float64) * scale).to(dtype)

    if layout == "transposed" and len(shape) >= 3:
        return randn(shape[:-2] + (shape[-1], shape[-2])).transpose(-1, -2)
    if layout == "sliced":
        return randn(shape[:-1] + (2 * shape[-1],))[..., ::2]
    return randn(shape)


timesteps = st.sampled_from([1e-6, 1e-3, 0.25, 0.5, 0.999, 1.0])


def call(fn):
    """(result, None) or (None, error) for an allowed error; any other exception fails the test."""
    try:
        return fn(), None
    except ALLOWED as error:
        return None, error


# Scalars that are sums of terms of both signs (the loss is the policy term plus beta * KL;
# approx_kl squares e_theta - e_old, ~0 on policy): both backends round the terms, so the
# result is compared on the scale of its terms, not of itself. Clip fractions count threshold
# crossings (one rounding flips one) and are only checked for finiteness.
CANCELLING = ("loss", "out[0]", "policy_loss", "kl", "approx_kl")
# Outputs that go through the ratio rho = exp(e_theta - e_old) (the loss, its gradient out[1],
# the ratio statistics): the rounding of e (~ulp * |e|) becomes a relative error of rho.
AMPLIFIED = ("out[0]", "out[1]", "policy_loss", "ratio_mean", "ratio_max", "kl")
THRESHOLD_COUNTS = ("clipfrac", "clipfrac_gt_one", "clipfrac_lt_one")


def flat(result, name="out"):
    """[(name, tensor)] of a tensor, a tuple of results or a dict of statistics."""
    if isinstance(result, torch.Tensor):
        return [(name, result)]
    if isinstance(result, dict):
        return [(k, v) for k, v in sorted(result.items())]
    return [pair for i, r in enumerate(result) for pair in flat(r, f"{name}[{i}]")]


def check_agrees(run, inputs, backend):
    """Compare ``run(inputs, backend)`` with torch in the same dtype and with the float64 evaluation."""
    ref64, error64 = call(lambda: run({k: _double(v) for k, v in inputs.items()}, "torch"))
    got, error = call(lambda: run(inputs, backend))
    base, base_error = call(lambda: run(inputs, "torch"))
    assert (error is None) == (base_error is None), f"{backend}: {error!r}, torch: {base_error!r}"
    if error is not None:
        return
    if error64 is not None:
        return  # the float64 evaluation itself is out of range (an overflow the ops rightly refuse)
    references = {k: float(v.abs().max()) for k, v in flat(ref64) if v.numel()}
    elbo_scale = max(references.get("elbo_mean", 0.0), references.get("elbo_old_mean", 0.0))
    advantage_scale = float(inputs["advantages"].abs().max()) if "advantages" in inputs else 0.0
    # kl1..kl3 are differences e_theta - e_ref: their terms are on the ELBOs' scale.
    term_scale = max(references.get("policy_loss", 0.0), references.get("kl", 0.0), elbo_scale,
                     advantage_scale * elbo_scale * max(references.get("ratio_max", 1.0), 1.0), elbo_scale ** 2)
    for (name, g), (_, b), (_, r) in zip(flat(got), flat(base), flat(ref64)):
        r = r.double()
        if not bool(torch.isfinite(r.to(g.dtype)).all()):
            continue  # the exact value overflows the output dtype (a float16 gradient above 65504)
        assert bool(torch.isfinite(g).all()), f"{backend} gave non-finite {name} where the math is finite: {g}"
        if name in THRESHOLD_COUNTS:
            continue
        scale = float(r.abs().max()) if r.numel() else 0.0
        if name in CANCELLING:
            scale = max(scale, term_scale)
        if name in AMPLIFIED:  # through exp(e_theta - e_old): relative error ~ |e| * ulp
            scale *= max(1.0, elbo_scale)
        ulp = torch.finfo(torch.float64 if g.dtype == torch.float64 else torch.float32).eps
        floor = 32 * ulp * max(scale, 1e-30)
        err_backend = float((g.double() - r).abs().max())
        err_torch = float((b.double() - r).abs().max())
        assert err_backend <= 2 * err_torch + floor, (backend, name, err_backend, err_torch, floor, g, b, r)


def _double(x):
    return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


# --- ops ----------------------------------------------------------------------------------------------
def run_elbo(weighting):
    def run(a, backend):
        return ek.elbo(a["v"], a["x0"], a["noise"], a["t"], weighting=weighting, backend=backend)
    return run


def run_noising(a, backend):
    return ek.noising(a["x0"], a["t"], a["noise"], backend=backend)


def run_policy_loss(objective, kl):
    def run(a, backend):
        v = a["v"].detach().clone().requires_grad_(True)
        loss, stats = ek.policy_loss(v, a["v_old"], a["v_ref"], a["x0"], a["noise"], a["t"], a["advantages"],
                                     objective=objective, kl=kl, beta=0.1, backend=backend)
        (grad,) = torch.autograd.grad(loss, v)
        return loss.detach(), grad, {k: s for k, s in stats.items()}
    return run


def run_sde_step(sde_type):
    def run(a, backend):
        return ek.sde_step_log_prob(a["v"], a["x"], a["x_prev"], a["sigma"], a["sigma_prev"], sde_type=sde_type,
                                    sigma_max=0.9, backend=backend)
    return run


def inputs_for(layout_, seed, t_value, k=1):
    shape, layout, dtype, scale = layout_
    g = torch.Generator().manual_seed(seed)
    n = shape[0] * k
    draws = (n,) + shape[1:]
    x0 = make(shape, layout, dtype, 1.0, g)
    v = make(draws, layout, dtype, scale, g)
    return dict(
        v=v, v_old=(v.double() * 1.001).to(dtype), v_ref=make(draws, layout, dtype, scale, g), x0=x0,
        noise=make(draws, layout, dtype, 1.0, g), t=torch.full((n,), t_value, dtype=torch.float32),
        advantages=torch.randn(n, generator=g),
    )


@FAST
@given(layouts(), st.integers(0, 2 ** 16), timesteps, st.sampled_from(ek.WEIGHTINGS), st.integers(1, 2))
def test_elbo_cpu_agrees_with_torch(layout_, seed, t, weighting, k):
    check_agrees(run_elbo(weighting), inputs_for(layout_, seed, t, k), "cpu")


@FAST
@given(layouts(), st.integers(0, 2 ** 16), timesteps, st.integers(1, 3))
def test_noising_cpu_agrees_with_torch(layout_, seed, t, k):
    check_agrees(run_noising, inputs_for(layout_, seed, t, k), "cpu")


@FAST
@given(layouts(), st.integers(0, 2 ** 16), timesteps, st.sampled_from(list(ek.OBJECTIVES)),
       st.sampled_from(ek.KL_ESTIMATORS + (None,)))
def test_policy_loss_and_its_gradient_cpu_agree_with_torch(layout_, seed, t, objective, kl):
    a = inputs_for(layout_, seed, t)
    if objective == "nft":
        a["advantages"] = torch.rand(a["advantages"].shape)  # optimality probabilities in [0, 1]
    # Ratio objectives exponentiate e_theta - e_old; keep the two policies' ELBOs comparable so the
    # math stays finite (a huge log-ratio is an overflow the ops rightly refuse, tested elsewhere).
    assume(layout_[3] <= 30.0 or objective in ("epg_noratio", "pepg_noratio", "par_noratio", "awm"))
    check_agrees(run_policy_loss(objective, kl), a, "cpu")


@FAST
@given(layouts(), st.integers(0, 2 ** 16), st.sampled_from([(1.0, 0.9), (0.5, 0.4), (1e-3, 0.0), (0.3, 1e-6)]),
       st.sampled_from(ek.SDE_TYPES))
def test_sde_step_log_prob_cpu_agrees_with_torch(layout_, seed, sigmas, sde_type):
    shape, layout, dtype, _ = layout_
    g = torch.Generator().manual_seed(seed)
    x = make(shape, layout, dtype, 1.0, g)
    a = dict(v=make(shape, layout, dtype, 1.0, g), x=x, x_prev=(x.double() * 0.9).to(dtype),
             sigma=torch.full((shape[0],), sigmas[0]), sigma_prev=torch.full((shape[0],), sigmas[1]))
    check_agrees(run_sde_step(sde_type), a, "cpu")


@FAST
@given(st.integers(1, 6), st.integers(1, 5), st.sampled_from(ek.ADVANTAGE_MODES),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
       st.sampled_from([0.0, 1e-30, 1.0, 3e38, -7.5]), st.booleans())
def test_group_advantages_of_equal_rewards_are_zero_and_finite(groups, size, mode, dtype, value, global_std):
    rewards = torch.full((groups * size,), value, dtype=torch.float64)
    if not torch.isfinite(rewards.to(dtype)).all():
        return
    adv, error = call(lambda: ek.group_advantages(rewards.to(dtype), torch.arange(groups).repeat_interleave(size),
                                                  mode=mode, global_std=global_std))
    assert error is None, error
    assert bool(torch.isfinite(adv).all())
    expected = 0.5 if mode == "nft" else 0.0
    assert torch.equal(adv, torch.full_like(adv, expected)), adv


@FAST
@given(st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=1, max_size=12),
       st.sampled_from(ek.ADVANTAGE_MODES), st.booleans())
def test_group_advantages_are_finite_for_finite_rewards(values, mode, global_std):
    rewards = torch.tensor(values, dtype=torch.float32)
    ids = torch.arange(len(values)) % 3
    adv, error = call(lambda: ek.group_advantages(rewards, ids, mode=mode, global_std=global_std))
    assert error is None, error
    assert bool(torch.isfinite(adv).all()), (values, adv)


# --- triton (interpreter: a few examples only) -------------------------------------------------------
def _triton_usable():
    return bool(ek.available_backends()["triton"])


@pytest.mark.skipif(not _triton_usable(), reason="triton backend not available")
@TRITON
@given(layouts(), st.integers(0, 2 ** 16), timesteps, st.sampled_from(ek.WEIGHTINGS))
def test_elbo_triton_agrees_with_torch(layout_, seed, t, weighting):
    check_agrees(run_elbo(weighting), inputs_for(layout_, seed, t, 2), "triton")


@pytest.mark.skipif(not _triton_usable(), reason="triton backend not available")
@TRITON
@given(layouts(), st.integers(0, 2 ** 16), timesteps, st.sampled_from(["pepg", "grpo", "nft"]))
def test_policy_loss_triton_agrees_with_torch(layout_, seed, t, objective):
    a = inputs_for(layout_, seed, t)
    if objective == "nft":
        a["advantages"] = torch.rand(a["advantages"].shape)
    assume(layout_[3] <= 30.0)
    check_agrees(run_policy_loss(objective, "girsanov"), a, "triton")


@pytest.mark.skipif(not _triton_usable(), reason="triton backend not available")
@TRITON
@given(layouts(), st.integers(0, 2 ** 16), timesteps)
def test_noising_triton_agrees_with_torch(layout_, seed, t):
    check_agrees(run_noising, inputs_for(layout_, seed, t, 2), "triton")
