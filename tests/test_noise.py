"""Counter-based noise: the torch reference against tl.randn, stream properties, statistics.

The Triton comparisons run under TRITON_INTERPRET=1 (set by conftest) on CPU
tensors; they are skipped when triton is not importable.
"""

import math
import os

import pytest
import torch

from elbo_kernels.ops.noise import (
    NoiseSeed,
    generate_noise,
    philox_reference,
    uint32_to_uniform_reference,
)

# (seed, offset) pairs: zero, one (a value triton specialises), a seed in
# [2**31, 2**32) (passed as uint32), seeds and offsets beyond 32 bits, counters
# crossing 2**32 and the largest seed.
STREAMS = [
    (0, 0),
    (1, 1),
    (2**31 + 5, 2**31 - 100),
    (12345, 2**32 - 1000),
    (2**40 + 7, 2**33 + 5),
    (2**63 - 1, 2**62 - 500),
]
COUNT = 2048


def _device():
    return "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"


@pytest.fixture(scope="module")
def triton_words():
    """A tiny interpreted kernel writing tl.randint4x words, uniforms and tl.randn."""
    triton = pytest.importorskip("triton")
    import triton.language as tl
    from elbo_kernels.ops import _triton

    if not _triton.status():
        pytest.skip(_triton.status().reason)

    @triton.jit
    def kernel(w0_ptr, w1_ptr, u1_ptr, u2_ptr, n_ptr, seed, offset, count, BLOCK: tl.constexpr):
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = index < count
        w0, w1, _, _ = tl.randint4x(seed, offset + index)
        tl.store(w0_ptr + index, w0.to(tl.int32, bitcast=True), mask=mask)
        tl.store(w1_ptr + index, w1.to(tl.int32, bitcast=True), mask=mask)
        tl.store(u1_ptr + index, tl.random.uint_to_uniform_float(w0), mask=mask)
        tl.store(u2_ptr + index, tl.random.uint_to_uniform_float(w1), mask=mask)
        tl.store(n_ptr + index, tl.randn(seed, offset + index), mask=mask)

    def run(seed, offset):
        dev = _device()
        w0, w1 = (torch.empty(COUNT, dtype=torch.int32, device=dev) for _ in range(2))
        u1, u2, normal = (torch.empty(COUNT, dtype=torch.float32, device=dev) for _ in range(3))
        kernel[(triton.cdiv(COUNT, 1024),)](w0, w1, u1, u2, normal, seed, offset, COUNT, BLOCK=1024)
        return w0.cpu(), w1.cpu(), u1.cpu(), u2.cpu(), normal.cpu()

    return run


def _as_uint32(words):
    return words.to(torch.int64) & 0xFFFFFFFF


def _ulps(a, b):
    """|a - b| in units of the float32 spacing at |b|."""
    spacing = torch.nextafter(b.abs(), torch.tensor(math.inf)) - b.abs()
    return ((a.double() - b.double()).abs() / spacing.double()).max().item()


@pytest.mark.parametrize("seed,offset", STREAMS)
def test_reference_philox_words_equal_triton_bitwise(triton_words, seed, offset):
    w0, w1, _, _, _ = triton_words(seed, offset)
    c0, c1 = philox_reference(seed, torch.arange(offset, offset + COUNT, dtype=torch.int64))
    assert torch.equal(c0, _as_uint32(w0))
    assert torch.equal(c1, _as_uint32(w1))


@pytest.mark.parametrize("seed,offset", STREAMS)
def test_reference_uniforms_equal_triton_bitwise(triton_words, seed, offset):
    w0, w1, u1, u2, _ = triton_words(seed, offset)
    assert torch.equal(uint32_to_uniform_reference(_as_uint32(w0)), u1)
    assert torch.equal(uint32_to_uniform_reference(_as_uint32(w1)), u2)
    assert float(u1.max()) < 1.0 and float(u1.min()) >= 0.0


@pytest.mark.parametrize("seed,offset", STREAMS)
def test_reference_normals_match_tl_randn_within_a_few_ulps(triton_words, seed, offset):
    # The integer stages are bitwise equal (above); Box-Muller's float32 log / cos
    # differ in the last bits between numpy (the interpreter) and the reference's
    # correctly rounded functions: measured up to 4 ulp, allowed 8.
    *_, normal = triton_words(seed, offset)
    eps = generate_noise((COUNT,), NoiseSeed(seed, offset))
    assert _ulps(eps, normal) <= 8
    assert (eps == normal).float().mean() > 0.5


def test_triton_backend_generate_noise_matches_reference():
    pytest.importorskip("triton")
    shape, noise_seed = (3, 5, 67), NoiseSeed(99, 2**32 - 300)
    fast = generate_noise(shape, noise_seed, device=_device(), backend="triton").cpu()
    reference = generate_noise(shape, noise_seed)
    assert fast.shape == reference.shape and fast.dtype == torch.float32
    assert _ulps(fast, reference) <= 8


def test_same_seed_and_offset_give_the_same_noise():
    a = generate_noise((4, 3, 5), NoiseSeed(7, 11))
    b = generate_noise((4, 3, 5), NoiseSeed(7, 11))
    assert torch.equal(a, b)


def test_different_seeds_give_different_noise():
    a = generate_noise((4096,), NoiseSeed(7, 0))
    b = generate_noise((4096,), NoiseSeed(8, 0))
    c = generate_noise((4096,), NoiseSeed(7 + 2**32, 0))  # differs only in the key's high word
    assert (a != b).float().mean() > 0.99
    assert (a != c).float().mean() > 0.99


@pytest.mark.parametrize("offset", [0, 2**32 - 3])
def test_offset_shifts_the_stream(offset):
    k = 5
    a = generate_noise((6, 7), NoiseSeed(3, offset)).flatten()
    b = generate_noise((6, 7), NoiseSeed(3, offset + k)).flatten()
    assert torch.equal(a[k:], b[:-k])


def test_flat_index_is_row_major_over_the_shape():
    a = generate_noise((2, 3, 4), NoiseSeed(5, 9))
    assert torch.equal(a.flatten(), generate_noise((24,), NoiseSeed(5, 9)))


def test_dtype_casts_the_float32_noise():
    a = generate_noise((10,), NoiseSeed(5), dtype=torch.float64)
    assert a.dtype == torch.float64
    assert torch.equal(a, generate_noise((10,), NoiseSeed(5)).double())


def test_reference_chunks_do_not_change_the_stream(monkeypatch):
    from elbo_kernels.ops import noise

    whole = generate_noise((1000,), NoiseSeed(4, 2**32 - 10))
    monkeypatch.setattr(noise, "_CHUNK", 64)
    assert torch.equal(generate_noise((1000,), NoiseSeed(4, 2**32 - 10)), whole)


@pytest.fixture(scope="module")
def million():
    return generate_noise((2**20,), NoiseSeed(2024, 77)).double()


def test_noise_mean_is_zero_within_five_standard_errors(million):
    n = million.numel()
    assert abs(float(million.mean())) < 5 / math.sqrt(n)


def test_noise_variance_is_one_within_five_standard_errors(million):
    n = million.numel()
    assert abs(float(million.var()) - 1) < 5 * math.sqrt(2 / n)


def test_noise_is_normal_by_kolmogorov_smirnov_and_dagostino(million):
    stats = pytest.importorskip("scipy.stats")
    sample = million.numpy()
    assert stats.kstest(sample, "norm").pvalue > 1e-4
    assert stats.normaltest(sample[: 2**17]).pvalue > 1e-4


def test_noise_lag_one_correlation_is_zero(million):
    x = million - million.mean()
    rho = float((x[1:] * x[:-1]).mean() / x.var())
    assert abs(rho) < 5 / math.sqrt(million.numel())


def test_noise_streams_of_adjacent_seeds_are_uncorrelated():
    a = generate_noise((2**18,), NoiseSeed(10)).double()
    b = generate_noise((2**18,), NoiseSeed(11)).double()
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 5 / math.sqrt(a.numel())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(noise_seed=(1, 2)), TypeError, "noise_seed"),
        (dict(noise_seed=NoiseSeed(-1)), ValueError, "seed"),
        (dict(noise_seed=NoiseSeed(2**63)), ValueError, "seed"),
        (dict(noise_seed=NoiseSeed(1.5)), TypeError, "seed"),
        (dict(noise_seed=NoiseSeed(1, -3)), ValueError, "offset"),
        (dict(noise_seed=NoiseSeed(1, 2**63 - 5)), ValueError, "offset"),
        (dict(noise_seed=NoiseSeed(1), dtype=torch.int32), TypeError, "dtype"),
        (dict(noise_seed=NoiseSeed(1), backend="numpy"), ValueError, "backend"),
    ],
)
def test_generate_noise_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        generate_noise((2, 5), **kwargs)


def test_generate_noise_rejects_bad_shapes():
    with pytest.raises(TypeError, match="shape"):
        generate_noise((2, 2.5), NoiseSeed(1))
    with pytest.raises(ValueError, match="shape"):
        generate_noise((2, -1), NoiseSeed(1))
