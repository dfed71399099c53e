"""The residual-sums op (elbo_kernels/ops/residual_sums.py) on every fused backend, against its
pure-torch reference: forward, closed-form backward, autograd, opcheck. Helpers and the tolerance
rule: tests/ops_cases.py."""

import pytest
import torch

from elbo_kernels.ops._base import accumulation_dtype
from elbo_kernels.ops._triton import interpreting
from elbo_kernels.ops.noise import NoiseSeed, generate_noise
from elbo_kernels.ops.residual_sums import (
    COLUMN,
    NUM_SUMS,
    SUM_NAMES,
    residual_sums,
    residual_sums_backward_reference,
    residual_sums_reference,
)
from ops_cases import (
    BACKENDS,
    DTYPES,
    FUSED_BACKENDS,
    LOW,
    assert_within_flash_rule,
    backend_noise,
    backend_params,
    device_of,
    double,
    op,
    opcheck,
    randn,
    sums_inputs,
)

# Columns with a gradient: the L1 sums (S1, P1, M1) feed the stop-gradient adaptive
# weight, and O*, R* do not depend on v, so finite differences see only these.
SQUARED_COLUMNS = [COLUMN[name] for name in ("S2", "O2", "K2", "R2", "P2", "M2")]

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
# Shape and presence together, each with a tensor and a NoiseSeed: K = 3 with prime D, D = 1,
# no optional tensors, v_old without nft, and nft_beta ignored without v_old.
SEEDED_CASES = {
    # name: (N, B, latent shape, v_old, v_ref, nft_beta)
    "all_nft_K3_prime": (6, 2, (3, 97), True, True, 0.3),
    "D1": (4, 4, (1,), True, True, 0.5),
    "no_optional": (3, 3, (5, 7), False, False, 0.0),
    "old_only_nft_off": (4, 2, (61,), True, False, 0.0),
    "ref_only": (4, 1, (2, 3, 5), False, True, 0.2),
}


def test_the_triton_kernels_write_one_column_per_sum_name():
    pytest.importorskip("triton")
    from elbo_kernels.ops._triton import residual_sums as kernels

    assert kernels.NUM_SUMS == NUM_SUMS == len(SUM_NAMES)


@pytest.mark.parametrize("presence", list(PRESENCE))
@pytest.mark.parametrize("case", SUMS_CASES, ids=lambda c: f"N{c[0]}B{c[1]}S{'x'.join(map(str, c[2]))}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_backward_match_reference(backend, dtype, case, presence):
    n, b, latent = case
    old, ref, beta = PRESENCE[presence]
    args = sums_inputs(n, b, latent, dtype, old=old, ref=ref, device=device_of(backend))
    sums = residual_sums(*args, nft_beta=beta, backend=backend)
    assert sums.shape == (n, NUM_SUMS) and sums.dtype == accumulation_dtype(dtype)
    truth = residual_sums_reference(*map(double, args), nft_beta=beta)
    assert_within_flash_rule(sums, residual_sums_reference(*args, nft_beta=beta), truth, "sums")
    # Absent tensors give exactly zero columns.
    zero = [] if old else ["O1", "O2"]
    zero += [] if ref else ["K2", "R1", "R2"]
    zero += [] if (old and beta > 0) else ["P1", "P2", "M1", "M2"]
    for name in zero:
        assert torch.all(sums[:, COLUMN[name]] == 0), name

    grad_sums = randn(n, NUM_SUMS, dtype=accumulation_dtype(dtype), device=device_of(backend))
    grad = op("residual_sums_backward", backend)(grad_sums, *args, beta, 0, 0)
    assert grad.shape == args[0].shape and grad.dtype == dtype
    grad_truth = residual_sums_backward_reference(grad_sums.double(), *map(double, args), nft_beta=beta)
    grad_torch = residual_sums_backward_reference(grad_sums, *args, nft_beta=beta)
    assert_within_flash_rule(grad, grad_torch, grad_truth, "grad")


@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
@pytest.mark.parametrize("case", list(SEEDED_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_backward_match_reference_with_the_backends_own_noise(backend, dtype, case, seeded):
    """A NoiseSeed is compared with the eps tensor the same backend generates (its ulp-level
    agreement with the torch generator is test_noise_seed_matches_torch_generator_reference's job)."""
    n, b, latent, old, ref, beta = SEEDED_CASES[case]
    device = device_of(backend)
    v, x0, eps, v_old, v_ref = sums_inputs(n, b, latent, dtype, old=old, ref=ref, device=device)
    noise = NoiseSeed(17, 2**32 - 40) if seeded else eps
    if seeded:
        eps = backend_noise(backend, v.shape, noise.seed, noise.offset, dtype, device)
    sums = residual_sums(v, x0, noise, v_old, v_ref, nft_beta=beta, backend=backend)
    low = residual_sums_reference(v, x0, eps, v_old, v_ref, beta)
    exact = residual_sums_reference(v.double(), x0.double(), eps.double(), double(v_old), double(v_ref), beta)
    assert sums.dtype == accumulation_dtype(dtype)
    assert_within_flash_rule(sums, low, exact, "sums")

    grad_sums = randn(n, NUM_SUMS, dtype=sums.dtype, device=device)
    seed, offset = (noise.seed, noise.offset) if seeded else (0, 0)
    grad_v = op("residual_sums_backward", backend)(
        grad_sums, v, x0, None if seeded else eps, v_old, v_ref, beta, seed, offset
    )
    low = residual_sums_backward_reference(grad_sums, v, x0, eps, v_old, v_ref, beta)
    exact = residual_sums_backward_reference(
        grad_sums.double(), v.double(), x0.double(), eps.double(), double(v_old), double(v_ref), beta
    )
    assert grad_v.dtype == dtype and grad_v.shape == v.shape
    assert_within_flash_rule(grad_v, low, exact, "grad_v")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params(*(("cpu", "cuda") if interpreting() else FUSED_BACKENDS)))
def test_sd3_latent_shape_matches_reference(backend, dtype):
    """[8, 16, 64, 64]: 32 chunks per row, the size the kernels are built for (too big for the interpreter)."""
    args = sums_inputs(8, 8, (16, 64, 64), dtype, device=device_of(backend))
    sums = residual_sums(*args, nft_beta=0.5, backend=backend)
    truth = residual_sums_reference(*map(double, args), nft_beta=0.5)
    assert_within_flash_rule(sums, residual_sums_reference(*args, nft_beta=0.5), truth, "sums")
    grad_sums = randn(8, NUM_SUMS, device=device_of(backend))
    grad = op("residual_sums_backward", backend)(grad_sums, *args, 0.5, 0, 0)
    grad_truth = residual_sums_backward_reference(grad_sums.double(), *map(double, args), nft_beta=0.5)
    assert_within_flash_rule(grad, residual_sums_backward_reference(grad_sums, *args, nft_beta=0.5), grad_truth)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_seed_matches_torch_generator_reference(backend, dtype):
    """eps regenerated in-kernel = generate_noise's torch reference (float32 eps, never rounded to dtype).

    The regenerated eps is a float32 quantity whose last bit depends on the math
    library's log / cos, so the floor is in float32 ulps even for float64 inputs.
    """
    device = device_of(backend)
    v, x0, _, v_old, v_ref = sums_inputs(6, 3, (4, 37), dtype, device=device)
    seed = NoiseSeed(2**40 + 17, 2**32 - 100)  # the counters cross into the high 32-bit word
    sums = residual_sums(v, x0, seed, v_old, v_ref, nft_beta=0.3, backend=backend)
    truth = residual_sums_reference(*map(double, (v, x0)), seed, double(v_old), double(v_ref), nft_beta=0.3)
    torch_low = residual_sums_reference(v, x0, seed, v_old, v_ref, nft_beta=0.3)
    assert_within_flash_rule(sums, torch_low, truth, "sums", unit=2.0**-23)
    grad_sums = randn(6, NUM_SUMS, dtype=accumulation_dtype(dtype), device=device)
    grad = op("residual_sums_backward", backend)(grad_sums, v, x0, None, v_old, v_ref, 0.3, seed.seed, seed.offset)
    grad_truth = residual_sums_backward_reference(
        grad_sums.double(), *map(double, (v, x0)), seed, double(v_old), double(v_ref), nft_beta=0.3
    )
    grad_torch = residual_sums_backward_reference(grad_sums, v, x0, seed, v_old, v_ref, nft_beta=0.3)
    assert_within_flash_rule(grad, grad_torch, grad_truth, "grad", unit=2.0**-23)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_seed_equals_generated_noise_tensor_bitwise(backend, dtype):
    """A NoiseSeed and the eps tensor the same backend generates from it give identical sums and gradients."""
    device = device_of(backend)
    v, x0, _, v_old, v_ref = sums_inputs(4, 2, (5000,), dtype, device=device)
    eps = backend_noise(backend, v.shape, 123, 2**32 - 100, dtype, device)
    assert eps.dtype == accumulation_dtype(dtype)
    sums_op = op("residual_sums", backend)
    from_seed = sums_op(v, x0, None, v_old, v_ref, 0.4, 123, 2**32 - 100)
    from_tensor = sums_op(v, x0, eps, v_old, v_ref, 0.4, 0, 0)
    assert torch.equal(from_seed, from_tensor)
    grad_sums = randn(4, NUM_SUMS, dtype=accumulation_dtype(dtype), device=device)
    backward = op("residual_sums_backward", backend)
    grad_seed = backward(grad_sums, v, x0, None, v_old, v_ref, 0.4, 123, 2**32 - 100)
    grad_tensor = backward(grad_sums, v, x0, eps, v_old, v_ref, 0.4, 0, 0)
    assert torch.equal(grad_seed, grad_tensor)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_accept_float32_noise_for_low_precision_inputs(backend, dtype):
    device = device_of(backend)
    v, x0, _, v_old, v_ref = sums_inputs(3, 3, (50,), dtype, device=device)
    eps32 = randn(3, 50, device=device)
    sums = op("residual_sums", backend)(v, x0, eps32, v_old, v_ref, 0.0, 0, 0)
    truth = residual_sums_reference(*map(double, (v, x0, eps32, v_old, v_ref)))
    torch_low = residual_sums_reference(v, x0, eps32, v_old, v_ref)
    assert_within_flash_rule(sums, torch_low, truth)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_non_contiguous_inputs_correctly(backend):
    device = device_of(backend)
    base = randn(5, 6, 40, 2, device=device)
    v = base[..., 0].transpose(1, 2)  # [5, 40, 6], strided
    x0 = randn(6, 5, 40, device=device).permute(1, 2, 0)  # [5, 40, 6], strided
    eps = randn(5, 6, 40, device=device).transpose(1, 2)
    v_old = randn(5, 40, 12, device=device)[..., ::2]
    v_ref = randn(40, 6, 5, device=device).permute(2, 0, 1)
    for t in (v, x0, eps, v_old, v_ref):
        assert t.shape == (5, 40, 6)
        assert not t.is_contiguous()
    sums_op = op("residual_sums", backend)
    got = sums_op(v, x0, eps, v_old, v_ref, 0.25, 0, 0)
    want = sums_op(*(t.contiguous() for t in (v, x0, eps, v_old, v_ref)), 0.25, 0, 0)
    assert torch.equal(got, want)
    torch.testing.assert_close(got, residual_sums_reference(v, x0, eps, v_old, v_ref, 0.25))
    grad_sums = randn(5, NUM_SUMS, device=device)
    backward = op("residual_sums_backward", backend)
    got_grad = backward(grad_sums.t().contiguous().t(), v, x0, eps, v_old, v_ref, 0.25, 0, 0)
    want_grad = residual_sums_backward_reference(grad_sums, v, x0, eps, v_old, v_ref, 0.25)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_row_strided_offset_and_expanded_inputs_correctly(backend):
    device = device_of(backend)
    n, b, latent = 4, 2, (3, 41)
    v = randn(2 * n, *latent, device=device)[::2]  # row-strided view
    x0 = randn(1, *latent, device=device).expand(b, *latent)  # stride 0 over rows
    eps = randn(n + 1, *latent, device=device)[1:]  # storage offset
    v_old = randn(n, latent[1], latent[0], device=device).transpose(1, 2)  # no flat view
    v_ref = randn(n, *latent, device=device)[:, :, ::1]
    sums = residual_sums(v, x0, eps, v_old, v_ref, nft_beta=0.4, backend=backend)
    contiguous = [t.contiguous() for t in (v, x0, eps, v_old, v_ref)]
    torch.testing.assert_close(sums, residual_sums_reference(*contiguous, 0.4), rtol=1e-5, atol=1e-5)
    grad = randn(n, NUM_SUMS, device=device).expand(n, NUM_SUMS)
    grad_t = torch.ones(NUM_SUMS, n, device=device).t()  # column-strided grad_sums
    for g in (grad, grad_t):
        torch.testing.assert_close(
            op("residual_sums_backward", backend)(g, v, x0, eps, v_old, v_ref, 0.4, 0, 0),
            residual_sums_backward_reference(g, *contiguous, 0.4),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_a_stride_zero_expanded_x0_correctly(backend):
    """x0 given as a stride-0 expand (one latent for every sample) is read correctly."""
    device = device_of(backend)
    v, _, eps, v_old, v_ref = sums_inputs(6, 3, (8, 9), torch.float32, device=device)
    x0 = randn(1, 8, 9, device=device).expand(3, 8, 9)
    torch.testing.assert_close(
        op("residual_sums", backend)(v, x0, eps, v_old, v_ref, 0.0, 0, 0),
        residual_sums_reference(v, x0.contiguous(), eps, v_old, v_ref),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_are_bitwise_deterministic(backend):
    device = device_of(backend)
    v, x0, eps, v_old, v_ref = sums_inputs(4, 2, (519,), torch.bfloat16, device=device)
    sums_op, backward = op("residual_sums", backend), op("residual_sums_backward", backend)
    first = sums_op(v, x0, None, v_old, v_ref, 0.3, 3, 4)
    assert torch.equal(first, sums_op(v, x0, None, v_old, v_ref, 0.3, 3, 4))
    grad = torch.ones_like(first)
    assert torch.equal(
        backward(grad, v, x0, None, v_old, v_ref, 0.3, 3, 4), backward(grad, v, x0, None, v_old, v_ref, 0.3, 3, 4)
    )


# ---------------------------------------------------------------- autograd


@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, seeded):
    v, x0, eps, v_old, v_ref = sums_inputs(4, 2, (3, 5), torch.float64, device=device_of(backend))
    v.requires_grad_(True)
    noise, seed = (None, 9) if seeded else (eps, 0)
    sums_op = op("residual_sums", backend)
    assert torch.autograd.gradcheck(
        lambda v: sums_op(v, x0, noise, v_old, v_ref, 0.6, seed, 2**33)[:, SQUARED_COLUMNS], (v,)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_l1_columns_carry_no_gradient(backend):
    v, x0, eps, v_old, v_ref = sums_inputs(4, 2, (3, 5), torch.float64, device=device_of(backend))
    v.requires_grad_(True)
    l1 = [COLUMN[name] for name in ("S1", "O1", "R1", "P1", "M1")]
    op("residual_sums", backend)(v, x0, eps, v_old, v_ref, 0.6, 0, 0)[:, l1].sum().backward()
    assert torch.all(v.grad == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autograd_gives_gradient_to_v_only_and_matches_reference(backend):
    device = device_of(backend)
    v, x0, eps, v_old, v_ref = sums_inputs(4, 2, (6, 5), torch.float32, device=device)
    tensors = [t.clone().requires_grad_(True) for t in (v, x0, eps, v_old, v_ref)]
    weights = randn(NUM_SUMS, device=device)
    (op("residual_sums", backend)(*tensors, 0.3, 0, 0) * weights).sum().backward()
    v_ref_grad = v.clone().requires_grad_(True)
    (residual_sums_reference(v_ref_grad, x0, eps, v_old, v_ref, 0.3) * weights).sum().backward()
    torch.testing.assert_close(tensors[0].grad, v_ref_grad.grad)
    assert all(t.grad is None for t in tensors[1:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_autograd_matches_reference_autograd_in_float64(backend):
    device = device_of(backend)
    v, x0, eps, v_old, v_ref = sums_inputs(6, 3, (4, 9), torch.float64, device=device)
    weights = randn(6, NUM_SUMS, dtype=torch.float64, device=device)
    v1 = v.clone().requires_grad_(True)
    (residual_sums(v1, x0, eps, v_old, v_ref, nft_beta=0.2, backend=backend) * weights).sum().backward()
    v2 = v.clone().requires_grad_(True)
    (residual_sums_reference(v2, x0, eps, v_old, v_ref, 0.2) * weights).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, seeded):
    device = device_of(backend)
    v, x0, eps, v_old, v_ref = sums_inputs(4, 2, (3, 7), torch.float32, device=device)
    v.requires_grad_(True)
    noise = None if seeded else eps
    opcheck(op("residual_sums", backend), (v, x0, noise, v_old, v_ref, 0.3, 11, 12))
    grad = randn(4, NUM_SUMS, device=device)
    opcheck(op("residual_sums_backward", backend), (grad, v.detach(), x0, noise, None, v_ref, 0.0, 11, 12))


# ---------------------------------------------------------------- Triton launch plumbing


@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_several_chunks_per_row_match_reference(monkeypatch, backend, seeded):
    from elbo_kernels.ops._triton import _common

    monkeypatch.setattr(_common, "CHUNK_OVERRIDE", 2 * _common.max_block() if interpreting() else 2048)
    d = 5 * _common.max_block() + 3  # 3 chunks, the last one ragged
    device = device_of(backend)
    v, x0, eps, v_old, v_ref = sums_inputs(3, 3, (d,), torch.float64, device=device)
    noise = NoiseSeed(8, 9) if seeded else eps
    sums = residual_sums(v, x0, noise, v_old, v_ref, nft_beta=0.3, backend=backend)
    if seeded:
        eps = generate_noise(v.shape, noise, device=device, dtype=torch.float64, backend=backend)
    torch.testing.assert_close(sums, residual_sums_reference(v, x0, eps, v_old, v_ref, 0.3), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_sums_over_several_chunks_are_bitwise_deterministic(monkeypatch, backend):
    from elbo_kernels.ops._triton import _common

    monkeypatch.setattr(_common, "CHUNK_OVERRIDE", _common.max_block())
    v, x0, eps, v_old, v_ref = sums_inputs(4, 2, (2 * _common.max_block() + 7,), torch.bfloat16,
                                           device=device_of(backend))
    sums_op, backward = op("residual_sums", backend), op("residual_sums_backward", backend)
    first = sums_op(v, x0, None, v_old, v_ref, 0.3, 3, 4)
    assert torch.equal(first, sums_op(v, x0, None, v_old, v_ref, 0.3, 3, 4))
    grad = torch.ones_like(first)
    assert torch.equal(
        backward(grad, v, x0, None, v_old, v_ref, 0.3, 3, 4), backward(grad, v, x0, None, v_old, v_ref, 0.3, 3, 4)
    )
