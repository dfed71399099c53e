"""The "cpu" (C++) backend of every fused op, and the "cuda" one where a GPU and its build exist.

Every op is compared with its pure-torch reference (elbo_kernels/ops/*.py),
forward and backward, for float32 / bfloat16 / float16 / float64.

Tolerances (flash-attention's rule): for each dtype, the backend's max error
against a float64 evaluation of the same (already rounded) inputs may be at
most twice the error of the torch reference run in that dtype, plus a floor of
8 float32 (float64) ulps of the result's scale.

The extension is built on first use (about a minute, then cached). The module
is skipped only when the build genuinely fails and ELBO_KERNELS_REQUIRE_CPP is
not set; with it set, a failed build fails the tests.
"""

import os

import pytest
import torch

from elbo_kernels.ops import _cpp
from elbo_kernels.ops.noise import NoiseSeed, generate_noise
from elbo_kernels.ops.noising import noising_op, noising_reference
from elbo_kernels.ops.residual_sums import (
    COLUMN,
    NUM_SUMS,
    residual_sums,
    residual_sums_backward_reference,
    residual_sums_reference,
)
from elbo_kernels.ops.sde_step import sde_step_backward_reference, sde_step_op, sde_step_reference

_STATUS = _cpp.cpu_status()  # raises under ELBO_KERNELS_REQUIRE_CPP=1 when the build fails
if not _STATUS:
    pytest.skip(f"C++ extension not built: {_STATUS.reason}", allow_module_level=True)
_cpp.load()

ops = torch.ops.elbo_kernels
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LOW = [torch.bfloat16, torch.float16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _cpp.cuda_status() else [])
BACKEND = {"cpu": "cpu", "cuda": "cuda"}


def _randn(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).to(device)


def _double(x):
    return x if x is None or isinstance(x, NoiseSeed) else x.double()


def assert_within_flash_rule(backend, torch_low, reference64, name="", unit=None):
    """max|backend - ref64| <= 2 max|torch_low - ref64| + 8 unit * max(|ref64|, 1).

    ``unit`` defaults to the ulp of 1 in the backend's output dtype (float32 for
    16-bit outputs, whose rounding the torch error already measures).
    """
    ref = reference64.double().cpu()
    backend_err = (backend.double().cpu() - ref).abs().max().item()
    torch_err = (torch_low.double().cpu() - ref).abs().max().item()
    if unit is None:
        unit = 2.0**-52 if backend.dtype == torch.float64 else 2.0**-23
    floor = 8 * unit * max(ref.abs().max().item(), 1.0)
    assert backend_err <= 2 * torch_err + floor, f"{name}: backend error {backend_err:g}, torch {torch_err:g}"


def _sums_inputs(n, b, latent, dtype, *, old=True, ref=True, device="cpu"):
    v = _randn(n, *latent, dtype=dtype, device=device)
    x0 = _randn(b, *latent, dtype=dtype, device=device)
    eps = _randn(n, *latent, dtype=dtype, device=device)
    v_old = _randn(n, *latent, dtype=dtype, device=device) if old else None
    v_ref = _randn(n, *latent, dtype=dtype, device=device) if ref else None
    return v, x0, eps, v_old, v_ref


def _sums_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- residual_sums

# (N, B, latent shape): D = 1, prime D within one chunk, prime D over several
# 2048-element chunks, x0 broadcast over K = 4 draws, 3-D packed tokens.
SUMS_CASES = [
    (4, 2, (1,)),
    (3, 3, (1031,)),
    (2, 1, (4099,)),
    (12, 3, (3, 5, 7)),
    (4, 2, (5, 3, 17)),
]
PRESENCE = {  # name: (v_old, v_ref, nft_beta)
    "v_only": (False, False, 0.0),
    "old": (True, False, 0.0),
    "ref": (False, True, 0.0),
    "old_ref": (True, True, 0.0),
    "old_ref_nft": (True, True, 0.7),
    "old_nft": (True, False, 1.0),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("presence", list(PRESENCE))
@pytest.mark.parametrize("case", SUMS_CASES, ids=lambda c: f"N{c[0]}B{c[1]}S{'x'.join(map(str, c[2]))}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_residual_sums_forward_and_backward_match_reference(dtype, case, presence, device):
    n, b, latent = case
    old, ref, beta = PRESENCE[presence]
    v, x0, eps, v_old, v_ref = _sums_inputs(n, b, latent, dtype, old=old, ref=ref, device=device)
    args = (v, x0, eps, v_old, v_ref)
    sums = residual_sums(*args, nft_beta=beta, backend=BACKEND[device])
    assert sums.shape == (n, NUM_SUMS) and sums.dtype == _sums_dtype(dtype)
    truth = residual_sums_reference(*map(_double, args), nft_beta=beta)
    assert_within_flash_rule(sums, residual_sums_reference(*args, nft_beta=beta), truth, "sums")
    # Absent tensors give exactly zero columns.
    zero = [] if old else ["O1", "O2"]
    zero += [] if ref else ["K2", "R1", "R2"]
    zero += [] if (old and beta > 0) else ["P1", "P2", "M1", "M2"]
    for name in zero:
        assert torch.all(sums[:, COLUMN[name]] == 0), name

    grad_sums = _randn(n, NUM_SUMS, dtype=_sums_dtype(dtype), device=device)
    grad = ops.residual_sums_backward(grad_sums, v, x0, eps, v_old, v_ref, beta, 0, 0)
    assert grad.shape == v.shape and grad.dtype == dtype
    grad_truth = residual_sums_backward_reference(grad_sums.double(), *map(_double, args), nft_beta=beta)
    grad_torch = residual_sums_backward_reference(grad_sums, *args, nft_beta=beta)
    assert_within_flash_rule(grad, grad_torch, grad_truth, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_residual_sums_sd3_latent_shape_matches_reference(dtype):
    """[8, 16, 64, 64]: 32 chunks per row, the size the kernels are built for."""
    v, x0, eps, v_old, v_ref = _sums_inputs(8, 8, (16, 64, 64), dtype)
    args = (v, x0, eps, v_old, v_ref)
    sums = residual_sums(*args, nft_beta=0.5, backend="cpu")
    truth = residual_sums_reference(*map(_double, args), nft_beta=0.5)
    assert_within_flash_rule(sums, residual_sums_reference(*args, nft_beta=0.5), truth, "sums")
    grad_sums = _randn(8, NUM_SUMS)
    grad = ops.residual_sums_backward(grad_sums, *args, 0.5, 0, 0)
    grad_truth = residual_sums_backward_reference(grad_sums.double(), *map(_double, args), nft_beta=0.5)
    assert_within_flash_rule(grad, residual_sums_backward_reference(grad_sums, *args, nft_beta=0.5), grad_truth)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_residual_sums_noise_seed_matches_torch_generator_reference(dtype, device):
    """eps regenerated in-kernel = generate_noise's torch reference (float32 eps, never rounded to dtype).

    The regenerated eps is a float32 quantity whose last bit depends on the math
    library's log / cos, so the floor is in float32 ulps even for float64 inputs.
    """
    v, x0, _, v_old, v_ref = _sums_inputs(6, 3, (4, 37), dtype, device=device)
    seed = NoiseSeed(2**40 + 17, 2**32 - 100)  # the counters cross into the high 32-bit word
    sums = residual_sums(v, x0, seed, v_old, v_ref, nft_beta=0.3, backend=BACKEND[device])
    truth = residual_sums_reference(*map(_double, (v, x0)), seed, _double(v_old), _double(v_ref), nft_beta=0.3)
    torch_low = residual_sums_reference(v, x0, seed, v_old, v_ref, nft_beta=0.3)
    assert_within_flash_rule(sums, torch_low, truth, "sums", unit=2.0**-23)
    grad_sums = _randn(6, NUM_SUMS, dtype=_sums_dtype(dtype), device=device)
    grad = ops.residual_sums_backward(grad_sums, v, x0, None, v_old, v_ref, 0.3, seed.seed, seed.offset)
    grad_truth = residual_sums_backward_reference(
        grad_sums.double(), *map(_double, (v, x0)), seed, _double(v_old), _double(v_ref), nft_beta=0.3
    )
    grad_torch = residual_sums_backward_reference(grad_sums, v, x0, seed, v_old, v_ref, nft_beta=0.3)
    assert_within_flash_rule(grad, grad_torch, grad_truth, "grad", unit=2.0**-23)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_residual_sums_noise_seed_equals_generated_noise_tensor_bitwise(dtype):
    """A NoiseSeed and the eps tensor the same op generates from it give identical sums and gradients."""
    v, x0, _, v_old, v_ref = _sums_inputs(4, 2, (5000,), dtype)
    eps = ops.generate_noise(v, 123, 456)  # float32 (float64 for float64 v)
    assert eps.dtype == _sums_dtype(dtype)
    from_seed = ops.residual_sums(v, x0, None, v_old, v_ref, 0.4, 123, 456)
    from_tensor = ops.residual_sums(v, x0, eps, v_old, v_ref, 0.4, 123, 456)
    assert torch.equal(from_seed, from_tensor)
    grad_sums = _randn(4, NUM_SUMS, dtype=_sums_dtype(dtype))
    grad_seed = ops.residual_sums_backward(grad_sums, v, x0, None, v_old, v_ref, 0.4, 123, 456)
    grad_tensor = ops.residual_sums_backward(grad_sums, v, x0, eps, v_old, v_ref, 0.4, 123, 456)
    assert torch.equal(grad_seed, grad_tensor)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_residual_sums_accept_float32_noise_for_low_precision_inputs(dtype):
    v, x0, _, v_old, v_ref = _sums_inputs(3, 3, (50,), dtype)
    eps32 = _randn(3, 50)
    sums = ops.residual_sums(v, x0, eps32, v_old, v_ref, 0.0, 0, 0)
    truth = residual_sums_reference(*map(_double, (v, x0, eps32, v_old, v_ref)))
    torch_low = residual_sums_reference(v, x0, eps32, v_old, v_ref)
    assert_within_flash_rule(sums, torch_low, truth)


def test_residual_sums_read_non_contiguous_inputs_correctly():
    base = _randn(5, 6, 40, 2)
    v = base[..., 0].transpose(1, 2)  # [5, 40, 6], strided
    x0 = _randn(6, 5, 40).permute(1, 2, 0)  # [5, 40, 6], strided
    eps = _randn(5, 6, 40).transpose(1, 2)
    v_old = _randn(5, 40, 12)[..., ::2]
    v_ref = _randn(40, 6, 5).permute(2, 0, 1)
    for t in (v, x0, eps, v_old, v_ref):
        assert t.shape == (5, 40, 6)
        assert not t.is_contiguous()
    got = ops.residual_sums(v, x0, eps, v_old, v_ref, 0.25, 0, 0)
    want = ops.residual_sums(*(t.contiguous() for t in (v, x0, eps, v_old, v_ref)), 0.25, 0, 0)
    assert torch.equal(got, want)
    torch.testing.assert_close(got, residual_sums_reference(v, x0, eps, v_old, v_ref, 0.25))
    grad_sums = _randn(5, NUM_SUMS)
    got_grad = ops.residual_sums_backward(grad_sums.t().contiguous().t(), v, x0, eps, v_old, v_ref, 0.25, 0, 0)
    want_grad = residual_sums_backward_reference(grad_sums, v, x0, eps, v_old, v_ref, 0.25)
    torch.testing.assert_close(got_grad, want_grad)


def test_residual_sums_read_a_stride_zero_expanded_x0_correctly():
    """x0 given as a stride-0 expand (one latent for every sample) is read correctly."""
    v, _, eps, v_old, v_ref = _sums_inputs(6, 3, (8, 9), torch.float32)
    x0 = _randn(1, 8, 9).expand(3, 8, 9)
    torch.testing.assert_close(
        ops.residual_sums(v, x0, eps, v_old, v_ref, 0.0, 0, 0),
        residual_sums_reference(v, x0.contiguous(), eps, v_old, v_ref),
    )


# ---------------------------------------------------------------- autograd


# Columns with a gradient: the L1 sums (S1, P1, M1) feed the stop-gradient adaptive
# weight, and O*, R* do not depend on v, so finite differences see only these.
SQUARED_COLUMNS = [COLUMN[name] for name in ("S2", "O2", "K2", "R2", "P2", "M2")]


def test_residual_sums_gradcheck_float64():
    v, x0, eps, v_old, v_ref = _sums_inputs(4, 2, (3, 5), torch.float64)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: ops.residual_sums(v, x0, eps, v_old, v_ref, 0.6, 0, 0)[:, SQUARED_COLUMNS], (v,)
    )


def test_residual_sums_gradcheck_float64_with_noise_seed():
    v, x0, _, v_old, v_ref = _sums_inputs(4, 4, (7,), torch.float64)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: ops.residual_sums(v, x0, None, v_old, v_ref, 0.6, 9, 2**33)[:, SQUARED_COLUMNS], (v,)
    )


def test_residual_sums_l1_columns_carry_no_gradient():
    v, x0, eps, v_old, v_ref = _sums_inputs(4, 2, (3, 5), torch.float64)
    v.requires_grad_(True)
    l1 = [COLUMN[name] for name in ("S1", "O1", "R1", "P1", "M1")]
    ops.residual_sums(v, x0, eps, v_old, v_ref, 0.6, 0, 0)[:, l1].sum().backward()
    assert torch.all(v.grad == 0)


def test_residual_sums_autograd_gives_gradient_to_v_only_and_matches_reference():
    v, x0, eps, v_old, v_ref = _sums_inputs(4, 2, (6, 5), torch.float32)
    tensors = [t.clone().requires_grad_(True) for t in (v, x0, eps, v_old, v_ref)]
    weights = _randn(NUM_SUMS)
    (ops.residual_sums(*tensors, 0.3, 0, 0) * weights).sum().backward()
    v_ref_grad = v.clone().requires_grad_(True)
    (residual_sums_reference(v_ref_grad, x0, eps, v_old, v_ref, 0.3) * weights).sum().backward()
    torch.testing.assert_close(tensors[0].grad, v_ref_grad.grad)
    assert all(t.grad is None for t in tensors[1:])


# ---------------------------------------------------------------- noising / generate_noise


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("latent,b,k", [((1,), 3, 1), ((4, 9, 7), 2, 3), ((2, 2053), 1, 2)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noising_matches_reference(dtype, latent, b, k, device):
    x0 = _randn(b, *latent, dtype=dtype, device=device)
    t = torch.rand(b * k, device=device)
    eps = _randn(b * k, *latent, dtype=dtype, device=device)
    for noise in (eps, NoiseSeed(77, 2**32 + 5)):
        got = noising_op(x0, t, noise, backend=BACKEND[device])
        assert got.shape == (b * k, *latent) and got.dtype == dtype
        seeded = isinstance(noise, NoiseSeed)
        truth = noising_reference(x0.double(), t.double(), noise if seeded else eps.double())
        # Regenerated eps is float32 up to the math library's last bit (see the NoiseSeed sums test).
        assert_within_flash_rule(got, noising_reference(x0, t, noise), truth, unit=2.0**-23 if seeded else None)


def test_noising_gradcheck_float64():
    x0 = _randn(2, 3, 4, dtype=torch.float64).requires_grad_(True)
    t = torch.rand(6, dtype=torch.float64).requires_grad_(True)
    eps = _randn(6, 3, 4, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x0, t, eps: ops.noising(x0, t, eps, 3, 0, 0), (x0, t, eps))
    assert torch.autograd.gradcheck(lambda x0, t: ops.noising(x0, t, None, 3, 8, 9), (x0, t))


def test_generate_noise_never_requires_grad():
    like = _randn(3, 4).requires_grad_(True)
    eps = ops.generate_noise(like, 0, 0)
    assert not eps.requires_grad and eps.grad_fn is None


def test_noising_reads_non_contiguous_inputs():
    x0 = _randn(9, 3).t()  # [3, 9]
    eps = _randn(9, 6).t()
    t = torch.rand(12)[::2]
    got = ops.noising(x0, t, eps, 2, 0, 0)
    torch.testing.assert_close(got, noising_reference(x0, t, eps))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "seed,offset,shape", [(0, 0, (1000,)), (2**40 + 123, 2**32 - 300, (3, 7, 29)), (2**63 - 1, 2**62, (257,))]
)
def test_generate_noise_matches_torch_reference_to_a_few_ulp(seed, offset, shape, device):
    like = torch.empty(shape, device=device)
    got = ops.generate_noise(like, seed, offset)
    ref = generate_noise(shape, NoiseSeed(seed, offset), device=device)
    assert got.dtype == torch.float32 and got.shape == shape
    # Philox and the uniforms are exact; log / cos differ by the math library's last bits.
    torch.testing.assert_close(got, ref, rtol=6e-7, atol=1e-6)
    assert (got == ref).double().mean() > 0.9


def test_generate_noise_float64_like_gives_the_float32_values_in_float64():
    like = torch.empty(4, 33, dtype=torch.float64)
    got = ops.generate_noise(like, 5, 6)
    assert got.dtype == torch.float64
    assert torch.equal(got, ops.generate_noise(like.float(), 5, 6).double())


def test_generate_noise_reads_only_shape_of_an_expanded_like():
    like = torch.empty((), dtype=torch.bfloat16).expand(6, 50)
    got = ops.generate_noise(like, 1, 2)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, ops.generate_noise(torch.empty(6, 50), 1, 2))


def test_generate_noise_matches_triton_randn_in_the_interpreter():
    """The spec itself: eps[i] = tl.randn(seed, offset + i), run by the Triton interpreter."""
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest)")

    @triton.jit
    def _randn_kernel(out_ptr, seed, offset, n, BLOCK: tl.constexpr):
        idx = tl.arange(0, BLOCK)
        counters = offset + idx.to(tl.int64)
        tl.store(out_ptr + idx, tl.randn(seed, counters), mask=idx < n)

    n, seed, offset = 512, 2**40 + 99, 2**32 - 200
    want = torch.empty(n)
    _randn_kernel[(1,)](want, seed, offset, n, BLOCK=n)
    got = ops.generate_noise(torch.empty(n), seed, offset)
    # numpy's float32 log / cos (the interpreter's) differ from libm's in the last bits.
    torch.testing.assert_close(got, want, rtol=6e-7, atol=1e-6)


# ---------------------------------------------------------------- sde_step


def _sde_inputs(n, latent, dtype, device="cpu"):
    v, x, x_prev = (_randn(n, *latent, dtype=dtype, device=device) for _ in range(3))
    coef = torch.stack(
        [1 + 0.1 * torch.rand(n), -0.1 * torch.rand(n), 1 + torch.rand(n), torch.randn(n)], dim=1
    ).to(_sums_dtype(dtype)).to(device)
    return v, x, x_prev, coef


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_grad_mean", [False, True])
@pytest.mark.parametrize("latent", [(1,), (3, 5, 7), (4099,)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sde_step_forward_and_backward_match_reference(dtype, latent, with_grad_mean, device):
    n = 3
    v, x, x_prev, coef = _sde_inputs(n, latent, dtype, device)
    log_prob, mean = sde_step_op(v, x, x_prev, coef, backend=BACKEND[device])
    assert log_prob.shape == (n,) and mean.shape == v.shape and mean.dtype == _sums_dtype(dtype)
    d64 = [t.double() for t in (v, x, x_prev, coef)]
    lp_truth, mean_truth = sde_step_reference(*d64)
    lp_torch, mean_torch = sde_step_reference(v, x, x_prev, coef)
    assert_within_flash_rule(log_prob, lp_torch, lp_truth, "log_prob")
    assert_within_flash_rule(mean, mean_torch, mean_truth, "prev_mean")

    g_lp = _randn(n, dtype=_sums_dtype(dtype), device=device)
    g_mean = _randn(n, *latent, dtype=_sums_dtype(dtype), device=device) if with_grad_mean else None
    grad = ops.sde_step_backward(g_lp, g_mean, v, x, x_prev, coef)
    assert grad.dtype == dtype and grad.shape == v.shape
    grad_truth = sde_step_backward_reference(g_lp.double(), _double(g_mean), *d64)
    grad_torch = sde_step_backward_reference(g_lp, g_mean, v, x, x_prev, coef)
    assert_within_flash_rule(grad, grad_torch, grad_truth, "grad")


def test_sde_step_reads_non_contiguous_inputs():
    v = _randn(7, 4).t()
    x = _randn(4, 14)[:, ::2]
    x_prev = _randn(4, 7, 2)[..., 1]
    coef = _sde_inputs(4, (7,), torch.float32)[3].t().contiguous().t()
    lp, mean = ops.sde_step(v, x, x_prev, coef)
    lp_ref, mean_ref = sde_step_reference(v, x, x_prev, coef)
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(mean, mean_ref)


def test_sde_step_gradcheck_float64():
    v, x, x_prev, coef = _sde_inputs(3, (4, 5), torch.float64)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: ops.sde_step(v, x, x_prev, coef), (v,))
    assert torch.autograd.gradcheck(lambda v: ops.sde_step(v, x, x_prev, coef)[0], (v,))
