"""The counter-based noise generator (elbo_kernels/ops/noise.py) on every fused backend, against the
torch reference of its specification. The generator's statistics and the reference itself are
tests/test_noise.py's; helpers: tests/ops_cases.py."""

import pytest
import torch

from elbo_kernels.ops._base import accumulation_dtype
from elbo_kernels.ops._triton import interpreting
from elbo_kernels.ops.noise import NoiseSeed, generate_noise
from ops_cases import BACKENDS, device_of, op, opcheck, randn


def _output_dtype(backend, like_dtype):
    """The C++/CUDA op returns the accumulation dtype of ``like``; the Triton op like's own dtype
    (ops/noise.py; generate_noise casts either to the dtype asked for)."""
    return like_dtype if backend == "triton" else accumulation_dtype(like_dtype)


@pytest.mark.parametrize(
    "seed,offset,shape", [(0, 0, (1000,)), (2**40 + 123, 2**32 - 300, (3, 7, 29)), (2**63 - 1, 2**62, (257,))]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_reference_to_a_few_ulp(backend, seed, offset, shape):
    device = device_of(backend)
    got = op("generate_noise", backend)(torch.empty(shape, device=device), seed, offset)
    ref = generate_noise(shape, NoiseSeed(seed, offset), device=device)
    assert got.dtype == torch.float32 and got.shape == shape
    # Philox, the uniforms and 2 pi u2 are exact and rounded alike; log and cos are not correctly
    # rounded everywhere. The reference rounds log, sqrt and cos once each (<= u/2 relative, u =
    # 2^-23); CUDA documents logf <= 1 ulp, sqrtf correctly rounded and cosf <= 2 ulp (CUDA C++
    # Programming Guide, "Mathematical Functions"; libdevice, which Triton calls, is the same
    # library), glibc's logf / cosf < 1 ulp. So the kernel's r = sqrt(-2 log u1) is off by at most
    # u/2 (log, halved by sqrt) + u/2 (its rounding), cos by 2u, the product by u/2: 3.5u against
    # the reference's 1.5u, and |got - ref| <= 5u |ref| to first order, elementwise.
    # The interpreter's numpy float32 log / cos document no bound: the old tolerance there.
    if device == "cpu" and backend == "triton":
        torch.testing.assert_close(got, ref, rtol=6e-7, atol=1e-6)
    else:
        bound = 5 * 2.0**-23 * ref.double().abs() * (1 + 1e-3) + 1e-30
        excess = ((got.double() - ref.double()).abs() - bound).max().item()
        assert excess <= 0, f"noise exceeds the 5u relative bound by {excess:g} somewhere"


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_generate_noise_on_the_backend_matches_the_torch_backend(backend):
    device = device_of(backend)
    got = generate_noise((5, 41), NoiseSeed(3, 2**32 - 7), device=device, dtype=torch.float64, backend=backend)
    ref = generate_noise((5, 41), NoiseSeed(3, 2**32 - 7), device=device, dtype=torch.float64, backend="torch")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=6e-7, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_like_gives_the_float32_values_in_float64(backend):
    device = device_of(backend)
    generate = op("generate_noise", backend)
    got = generate(torch.empty(4, 33, dtype=torch.float64, device=device), 5, 6)
    assert got.dtype == torch.float64
    assert torch.equal(got, generate(torch.empty(4, 33, device=device), 5, 6).double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_only_shape_of_an_expanded_like(backend):
    device = device_of(backend)
    generate = op("generate_noise", backend)
    like = torch.empty((), dtype=torch.bfloat16, device=device).expand(6, 50)
    got = generate(like, 1, 2)
    assert got.dtype == _output_dtype(backend, torch.bfloat16) and got.is_contiguous()
    assert torch.equal(got, generate(torch.empty(6, 50, device=device), 1, 2).to(got.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_requires_grad(backend):
    like = randn(3, 4, device=device_of(backend)).requires_grad_(True)
    eps = op("generate_noise", backend)(like, 0, 0)
    assert not eps.requires_grad and eps.grad_fn is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_triton_randn_in_the_interpreter(backend):
    """The spec itself: eps[i] = tl.randn(seed, offset + i), run by the Triton interpreter."""
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")
    if not interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest)")

    @triton.jit
    def _randn_kernel(out_ptr, seed, offset, n, BLOCK: tl.constexpr):
        idx = tl.arange(0, BLOCK)
        counters = offset + idx.to(tl.int64)
        tl.store(out_ptr + idx, tl.randn(seed, counters), mask=idx < n)

    n, seed, offset = 512, 2**40 + 99, 2**32 - 200
    want = torch.empty(n)
    _randn_kernel[(1,)](want, seed, offset, n, BLOCK=n)
    got = op("generate_noise", backend)(torch.empty(n, device=device_of(backend)), seed, offset).cpu()
    # numpy's float32 log / cos (the interpreter's) differ from libm's in the last bits.
    torch.testing.assert_close(got, want, rtol=6e-7, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    like = torch.empty(3, 40, device=device_of(backend))
    opcheck(op("generate_noise", backend), (like, 4, 2**32 - 10))
