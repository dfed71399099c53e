"""Bad input raises ValueError / TypeError naming the argument, what was expected and what came in."""

import pytest
import torch

import elbo_kernels as ek


def good(n=4, shape=(2, 3)):
    v = torch.randn((n,) + shape)
    return dict(v=v, v_old=v + 0.01, v_ref=v - 0.01, x0=torch.randn((n,) + shape),
                noise=torch.randn((n,) + shape), t=torch.full((n,), 0.5), advantages=torch.randn(n))


def call(**overrides):
    args = good()
    args.update(overrides)
    extra = {k: args.pop(k) for k in list(args) if k not in ("v", "v_old", "v_ref", "x0", "noise", "t", "advantages")}
    return ek.policy_loss(args["v"], args["v_old"], args["v_ref"], args["x0"], args["noise"], args["t"],
                          args["advantages"], backend="torch", **extra)


@pytest.mark.parametrize("name", ["v_old", "v_ref", "noise"])
def test_shape_mismatch_names_the_argument(name):
    with pytest.raises(ValueError, match=rf"{name} must have the shape of v \(4, 2, 3\), got \(4, 3, 2\)"):
        call(**{name: torch.randn(4, 3, 2)})


@pytest.mark.parametrize("name", ["v_old", "v_ref", "noise"])
def test_dtype_mismatch_names_the_argument(name):
    with pytest.raises(TypeError, match=rf"{name} must have the dtype of v"):
        call(**{name: torch.randn(4, 2, 3, dtype=torch.float64)})


def test_device_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="v_ref must be on the device of v"):
        call(v_ref=torch.empty(4, 2, 3, device="meta"))


def test_x0_rows_must_divide_draws():
    with pytest.raises(ValueError, match="x0 has 3 rows but v has 4"):
        call(x0=torch.randn(3, 2, 3))
    with pytest.raises(ValueError, match="x0 must be"):
        call(x0=torch.randn(4, 6))


@pytest.mark.parametrize("bad_t", [0.0, -0.1, 1.5])
def test_t_outside_unit_interval(bad_t):
    t = torch.full((4,), 0.5)
    t[2] = bad_t
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        call(t=t)


def test_t_of_wrong_length():
    with pytest.raises(ValueError, match=r"t must have shape \[4\]"):
        call(t=torch.full((3,), 0.5))


@pytest.mark.parametrize("name", ["v", "v_old", "v_ref", "x0", "noise", "advantages"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_are_named(name, value):
    args = good()
    args[name] = args[name].clone()
    args[name].view(-1)[1] = value
    with pytest.raises(ValueError, match=rf"{name} contains 1 non-finite"):
        call(**{name: args[name]})


def test_empty_batch():
    with pytest.raises(ValueError, match="v is an empty batch"):
        ek.elbo(torch.empty(0, 3), torch.empty(0, 3), torch.empty(0, 3), torch.empty(0), backend="torch")


@pytest.mark.parametrize(
    "key,value",
    [("objective", "ppo"), ("weighting", "sigmoid"), ("kl", "k4"), ("backend", "opencl")],
)
def test_unknown_names_list_what_is_allowed(key, value):
    with pytest.raises(ValueError, match=rf"unknown {key} '{value}'; expected one of"):
        if key == "backend":
            ek.policy_loss(*good().values(), backend=value)
        else:
            call(**{key: value})


def test_non_tensor_and_integer_inputs():
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        ek.elbo([[1.0]], torch.zeros(1, 1), torch.zeros(1, 1), 0.5)
    with pytest.raises(TypeError, match="v must be a floating tensor"):
        ek.elbo(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1), torch.zeros(1, 1), 0.5)


def test_nft_advantages_must_be_probabilities():
    with pytest.raises(ValueError, match="optimality probabilities"):
        call(objective="nft", advantages=torch.tensor([0.2, 1.5, 0.1, 0.0]))


@pytest.mark.parametrize("key,value", [("beta", -1.0), ("clip_range", 0.0), ("nft_beta", float("nan"))])
def test_bad_scalars(key, value):
    with pytest.raises(ValueError, match=key):
        call(**{key: value})


def test_missing_old_or_reference_policy():
    with pytest.raises(ValueError, match="v_old is required"):
        call(v_old=None)
    with pytest.raises(ValueError, match="v_ref is required"):
        call(v_ref=None)
    call(v_ref=None, kl=None)


def test_sde_step_bad_input():
    v = torch.randn(2, 3)
    with pytest.raises(ValueError, match="x_prev must have the shape of v"):
        ek.sde_step_log_prob(v, v, torch.randn(2, 4), 0.5, 0.4, backend="torch")
    with pytest.raises(ValueError, match="unknown sde_type"):
        ek.sde_step_log_prob(v, v, v, 0.5, 0.4, sde_type="ode", backend="torch")
    with pytest.raises(ValueError, match="x contains"):
        ek.sde_step_log_prob(v, torch.full_like(v, float("nan")), v, 0.5, 0.4, backend="torch")


def test_noise_seed_fields_are_checked():
    args = good()
    with pytest.raises(ValueError, match=r"noise_seed.seed"):
        ek.elbo(args["v"], args["x0"], ek.NoiseSeed(-1), args["t"], backend="torch")
    with pytest.raises(TypeError, match=r"noise_seed.offset"):
        ek.elbo(args["v"], args["x0"], ek.NoiseSeed(1, 0.5), args["t"], backend="torch")


def zero_size(n=4, shape=(0,)):
    return dict(v=torch.zeros((n,) + shape), v_old=torch.zeros((n,) + shape), v_ref=torch.zeros((n,) + shape),
                x0=torch.zeros((n,) + shape), noise=torch.zeros((n,) + shape), t=torch.full((n,), 0.5),
                advantages=torch.zeros(n))


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 2, 2)])
def test_zero_size_latents_are_rejected_in_every_op_and_backend(backend, shape):
    a = zero_size(shape=shape)
    expected = r"v has a zero-size latent dimension \(shape \(4, " + ", ".join(map(str, shape))
    with pytest.raises(ValueError, match=expected):
        ek.elbo(a["v"], a["x0"], a["noise"], a["t"], backend=backend)
    with pytest.raises(ValueError, match=expected):
        ek.policy_loss(a["v"], a["v_old"], a["v_ref"], a["x0"], a["noise"], a["t"], a["advantages"],
                       backend=backend)
    with pytest.raises(ValueError, match=expected):
        ek.policy_loss(a["v"], a["v_old"], a["v_ref"], a["x0"], ek.NoiseSeed(1), a["t"], a["advantages"],
                       backend=backend)
    with pytest.raises(ValueError, match=expected):
        ek.sde_step_log_prob(a["v"], a["x0"], a["noise"], 0.5, 0.4, backend=backend)
    with pytest.raises(ValueError, match=r"x0 has a zero-size latent dimension"):
        ek.noising(a["x0"], a["t"], a["noise"], backend=backend)


def test_a_zero_size_argument_other_than_v_is_named():
    a = zero_size(shape=(2,))
    with pytest.raises(ValueError, match="x0 has a zero-size latent dimension"):
        ek.elbo(a["v"], torch.zeros(4, 0), a["noise"], a["t"], backend="torch")
