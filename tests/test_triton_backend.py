"""The "triton" backend of every fused op against the pure-torch references.

Runs the kernels in the Triton interpreter on CPU tensors (TRITON_INTERPRET=1,
set by conftest), or on a GPU with TRITON_INTERPRET=0. Grids stay small (a
program instance costs ~1.5 ms interpreted): N <= 6 rows, D <= 600.

Tolerances (flash-attention's rule): for each dtype the backend's max error
against a float64 evaluation of the same (already rounded) inputs may be at
most twice the error of the torch reference run in that dtype, plus a floor of
a few float32 (float64) ulps of the result's scale.
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from elbo_kernels.ops import _triton  # noqa: E402
from elbo_kernels.ops.noise import NoiseSeed, generate_noise  # noqa: E402
from elbo_kernels.ops.noising import noising_op, noising_reference  # noqa: E402
from elbo_kernels.ops.residual_sums import (  # noqa: E402
    COLUMN,
    residual_sums,
    residual_sums_backward_reference,
    residual_sums_reference,
)
from elbo_kernels.ops.sde_step import (  # noqa: E402
    sde_step_backward_reference,
    sde_step_op,
    sde_step_reference,
)

if not _triton.status():
    pytest.skip(_triton.status().reason, allow_module_level=True)

from elbo_kernels.ops._triton import _common  # noqa: E402
from elbo_kernels.ops._triton import noise as _tri_noise  # noqa: E402,F401
from elbo_kernels.ops._triton import noising as _tri_noising  # noqa: E402,F401
from elbo_kernels.ops._triton import residual_sums as _tri_sums  # noqa: E402
from elbo_kernels.ops._triton import sde_step as _tri_sde  # noqa: E402

DEVICE = "cpu" if _triton.interpreting() else "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
ops = torch.ops.elbo_kernels

# Differentiable sum columns (S1, P1, M1 are stop-gradient; O2, R2 do not depend on v).
GRAD_COLUMNS = [COLUMN[name] for name in ("S2", "O2", "K2", "R2", "P2", "M2")]


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=torch.float64).to(dtype).to(DEVICE)


def assert_within_flash_rule(backend, torch_low, reference64, name=""):
    """max|backend - ref64| <= 2 max|torch_low - ref64| + floor."""
    ref = reference64.double().cpu()
    backend_err = (backend.double().cpu() - ref).abs().max().item()
    torch_err = (torch_low.double().cpu() - ref).abs().max().item()
    unit = 2.0**-52 if backend.dtype == torch.float64 else 2.0**-23
    floor = 8 * unit * max(ref.abs().max().item(), 1.0)
    assert backend_err <= 2 * torch_err + floor, f"{name}: backend {backend_err:g} vs torch {torch_err:g}"


def _sums_inputs(n, b, latent, dtype, *, old=True, ref=True):
    v = _randn(n, *latent, dtype=dtype)
    x0 = _randn(b, *latent, dtype=dtype)
    eps = _randn(n, *latent, dtype=dtype)
    v_old = _randn(n, *latent, dtype=dtype) if old else None
    v_ref = _randn(n, *latent, dtype=dtype) if ref else None
    return v, x0, eps, v_old, v_ref


def _double(x):
    return x if x is None or isinstance(x, NoiseSeed) else x.double()


# ---------------------------------------------------------------- status / import


def test_importing_elbo_kernels_does_not_import_triton():
    code = (
        "import sys, elbo_kernels, elbo_kernels.backends, elbo_kernels.ops.residual_sums, "
        "elbo_kernels.ops.noising, elbo_kernels.ops.sde_step, elbo_kernels.ops._triton\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_status_names_triton_version_and_mode():
    import triton

    status = _triton.status()
    assert status.available
    assert triton.__version__ in status.reason
    assert ("interpreter" in status.reason) == _triton.interpreting()


# ---------------------------------------------------------------- residual sums

SUM_CASES = {
    # name: (N, B, latent shape, v_old, v_ref, nft_beta)
    "all_nft_K3_prime": (6, 2, (3, 97), True, True, 0.3),
    "D1": (4, 4, (1,), True, True, 0.5),
    "no_optional": (3, 3, (5, 7), False, False, 0.0),
    "old_only_nft_off": (4, 2, (61,), True, False, 0.0),
    "ref_only": (4, 1, (2, 3, 5), False, True, 0.2),  # nft_beta ignored without v_old
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SUM_CASES))
@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
def test_residual_sums_forward_and_backward_match_reference(case, dtype, seeded):
    n, b, latent, old, ref, beta = SUM_CASES[case]
    v, x0, eps, v_old, v_ref = _sums_inputs(n, b, latent, dtype, old=old, ref=ref)
    if seeded:
        # The kernels' regenerated eps is compared to the triton-generated eps tensor
        # (its ulp-level agreement with the torch generator is tests/test_noise.py's job).
        noise = NoiseSeed(17, 2**32 - 40)
        eps = generate_noise(v.shape, noise, device=DEVICE, backend="triton").to(DEVICE)
    else:
        noise = eps
    sums = residual_sums(v, x0, noise, v_old, v_ref, nft_beta=beta, backend="triton")
    low = residual_sums_reference(v, x0, eps, v_old, v_ref, beta)
    exact = residual_sums_reference(v.double(), x0.double(), eps.double(), _double(v_old), _double(v_ref), beta)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_within_flash_rule(sums, low, exact, "sums")

    grad_sums = _randn(n, 11, dtype=sums.dtype)
    seed, offset = (noise.seed, noise.offset) if seeded else (0, 0)
    grad_v = ops.residual_sums_backward_triton(
        grad_sums, v, x0, None if seeded else eps, v_old, v_ref, beta, seed, offset
    )
    low = residual_sums_backward_reference(grad_sums, v, x0, eps, v_old, v_ref, beta)
    exact = residual_sums_backward_reference(
        grad_sums.double(), v.double(), x0.double(), eps.double(), _double(v_old), _double(v_ref), beta
    )
    assert grad_v.dtype == dtype and grad_v.shape == v.shape
    assert_within_flash_rule(grad_v, low, exact, "grad_v")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_residual_sums_regenerated_noise_equals_generated_noise_tensor_bitwise(dtype):
    v, x0, _, v_old, v_ref = _sums_inputs(4, 2, (3, 53), dtype)
    seed, offset = 5, 2**32 - 100
    eps = generate_noise(v.shape, NoiseSeed(seed, offset), device=DEVICE, backend="triton")
    from_seed = ops.residual_sums_triton(v, x0, None, v_old, v_ref, 0.25, seed, offset)
    from_tensor = ops.residual_sums_triton(v, x0, eps, v_old, v_ref, 0.25, 0, 0)
    assert torch.equal(from_seed, from_tensor)
    grad = _randn(4, 11, dtype=from_seed.dtype)
    assert torch.equal(
        ops.residual_sums_backward_triton(grad, v, x0, None, v_old, v_ref, 0.25, seed, offset),
        ops.residual_sums_backward_triton(grad, v, x0, eps, v_old, v_ref, 0.25, 0, 0),
    )


def test_residual_sums_noise_seed_matches_torch_generator_reference():
    v, x0, _, v_old, v_ref = _sums_inputs(4, 2, (3, 53), torch.float64)
    noise = NoiseSeed(123, 2**33 + 1)
    sums = residual_sums(v, x0, noise, v_old, v_ref, nft_beta=0.1, backend="triton")
    reference = residual_sums(v, x0, noise, v_old, v_ref, nft_beta=0.1, backend="torch")
    # eps agree to a few float32 ulps (see ops/noise.py), so the sums to ~1e-6 relative.
    torch.testing.assert_close(sums, reference, rtol=1e-6, atol=1e-6)


def test_residual_sums_reads_non_contiguous_inputs_correctly():
    n, b, latent = 4, 2, (3, 41)
    big = _randn(2 * n, *latent)
    v = big[::2]  # row-strided view: read in place through the row stride
    x0 = _randn(1, *latent).expand(b, *latent)  # stride 0 over rows
    eps = _randn(n + 1, *latent)[1:]  # storage offset
    v_old = _randn(n, latent[1], latent[0]).transpose(1, 2)  # no flat view: copied
    v_ref = _randn(n, *latent)[:, :, ::1]
    sums = residual_sums(v, x0, eps, v_old, v_ref, nft_beta=0.4, backend="triton")
    contiguous = [t.contiguous() for t in (v, x0, eps, v_old, v_ref)]
    torch.testing.assert_close(sums, residual_sums_reference(*contiguous, 0.4), rtol=1e-5, atol=1e-5)
    grad = _randn(n, 11).expand(n, 11)
    grad_t = torch.ones(11, n, device=DEVICE).t()  # column-strided grad_sums
    for g in (grad, grad_t):
        torch.testing.assert_close(
            ops.residual_sums_backward_triton(g, v, x0, eps, v_old, v_ref, 0.4, 0, 0),
            residual_sums_backward_reference(g, *contiguous, 0.4),
            rtol=1e-5,
            atol=1e-5,
        )


@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
def test_residual_sums_several_chunks_per_row_match_reference(monkeypatch, seeded):
    monkeypatch.setattr(_common, "CHUNK_OVERRIDE", 2 * _common.max_block() if _triton.interpreting() else 2048)
    d = 5 * _common.max_block() + 3  # 3 chunks, the last one ragged
    v, x0, eps, v_old, v_ref = _sums_inputs(3, 3, (d,), torch.float64)
    noise = NoiseSeed(8, 9) if seeded else eps
    sums = residual_sums(v, x0, noise, v_old, v_ref, nft_beta=0.3, backend="triton")
    if seeded:
        eps = generate_noise(v.shape, noise, device=DEVICE, dtype=torch.float64, backend="triton")
    torch.testing.assert_close(sums, residual_sums_reference(v, x0, eps, v_old, v_ref, 0.3), rtol=1e-12, atol=1e-10)


def test_residual_sums_are_bitwise_deterministic(monkeypatch):
    monkeypatch.setattr(_common, "CHUNK_OVERRIDE", _common.max_block())
    v, x0, eps, v_old, v_ref = _sums_inputs(4, 2, (2 * _common.max_block() + 7,), torch.bfloat16)
    first = ops.residual_sums_triton(v, x0, None, v_old, v_ref, 0.3, 3, 4)
    second = ops.residual_sums_triton(v, x0, None, v_old, v_ref, 0.3, 3, 4)
    assert torch.equal(first, second)
    grad = torch.ones_like(first)
    assert torch.equal(
        ops.residual_sums_backward_triton(grad, v, x0, None, v_old, v_ref, 0.3, 3, 4),
        ops.residual_sums_backward_triton(grad, v, x0, None, v_old, v_ref, 0.3, 3, 4),
    )


@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
def test_residual_sums_gradcheck_float64(seeded):
    v, x0, eps, v_old, v_ref = _sums_inputs(4, 2, (2, 5), torch.float64)
    v.requires_grad_(True)
    noise, seed = (None, 31) if seeded else (eps, 0)

    def differentiable_sums(v):
        return ops.residual_sums_triton(v, x0, noise, v_old, v_ref, 0.3, seed, 2**32 - 3)[:, GRAD_COLUMNS]

    assert torch.autograd.gradcheck(differentiable_sums, (v,), fast_mode=True)


def test_residual_sums_autograd_matches_reference_autograd():
    v, x0, eps, v_old, v_ref = _sums_inputs(6, 3, (4, 9), torch.float64)
    weights = _randn(6, 11, dtype=torch.float64)
    v1 = v.clone().requires_grad_(True)
    (residual_sums(v1, x0, eps, v_old, v_ref, nft_beta=0.2, backend="triton") * weights).sum().backward()
    v2 = v.clone().requires_grad_(True)
    (residual_sums_reference(v2, x0, eps, v_old, v_ref, 0.2) * weights).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
def test_residual_sums_opcheck(seeded):
    v, x0, eps, v_old, v_ref = _sums_inputs(4, 2, (3, 7), torch.float32)
    v.requires_grad_(True)
    noise = None if seeded else eps
    torch.library.opcheck(ops.residual_sums_triton.default, (v, x0, noise, v_old, v_ref, 0.3, 11, 12))
    grad = _randn(4, 11)
    torch.library.opcheck(ops.residual_sums_backward_triton.default, (grad, v.detach(), x0, noise, None, v_ref, 0.0, 11, 12))


# ---------------------------------------------------------------- noising


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("latent,b,k", [((1,), 3, 2), ((3, 97), 2, 3), ((4, 5, 6), 5, 1)])
@pytest.mark.parametrize("seeded", [False, True], ids=["noise_tensor", "noise_seed"])
def test_noising_matches_reference(dtype, latent, b, k, seeded):
    x0 = _randn(b, *latent, dtype=dtype)
    t = torch.rand(b * k, dtype=torch.float64).to(DEVICE)
    if seeded:
        noise = NoiseSeed(3, 2**32 - 7)
        eps = generate_noise((b * k,) + latent, noise, device=DEVICE, backend="triton")
    else:
        noise = eps = _randn(b * k, *latent, dtype=dtype)
    x_t = noising_op(x0, t, noise, backend="triton")
    assert x_t.dtype == dtype and x_t.shape == (b * k,) + latent
    low = noising_reference(x0, t, eps.to(dtype) if not seeded else eps)
    exact = noising_reference(x0.double(), t, eps.double())
    assert_within_flash_rule(x_t, low, exact, "x_t")
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(x_t, noising_reference(x0, t, eps), rtol=0, atol=0)


def test_noising_reads_non_contiguous_inputs_and_is_deterministic():
    x0 = _randn(4, 3, 29)[::2]
    t = torch.rand(8, device=DEVICE)[::2]
    eps = _randn(4, 29, 3).transpose(1, 2)
    first = ops.noising_triton(x0, t, eps, 2, 0, 0)
    torch.testing.assert_close(first, noising_reference(x0.contiguous(), t.contiguous(), eps.contiguous()))
    assert torch.equal(first, ops.noising_triton(x0, t, eps, 2, 0, 0))
    assert torch.equal(ops.noising_triton(x0, t, None, 2, 5, 6), ops.noising_triton(x0, t, None, 2, 5, 6))


def test_noising_opcheck():
    x0, t = _randn(2, 3, 5), torch.rand(4, device=DEVICE)
    torch.library.opcheck(ops.noising_triton.default, (x0, t, _randn(4, 3, 5), 2, 0, 0))
    torch.library.opcheck(ops.noising_triton.default, (x0, t, None, 2, 9, 2**32))


def test_generate_noise_opcheck():
    like = torch.empty(3, 40, device=DEVICE)
    torch.library.opcheck(ops.generate_noise_triton.default, (like, 4, 2**32 - 10))


# ---------------------------------------------------------------- sde step


def _sde_inputs(n, latent, dtype):
    v, x, x_prev = (_randn(n, *latent, dtype=dtype) for _ in range(3))
    coef = torch.stack(
        [1 + 0.1 * torch.rand(n), -0.1 * torch.rand(n), torch.rand(n) + 0.5, torch.randn(n)], dim=1
    ).to(DEVICE)
    return v, x, x_prev, coef


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("latent", [(1,), (3, 97), (2, 4, 4)])
@pytest.mark.parametrize("with_grad_mean", [False, True])
def test_sde_step_forward_and_backward_match_reference(dtype, latent, with_grad_mean):
    n = 4
    v, x, x_prev, coef = _sde_inputs(n, latent, dtype)
    log_prob, prev_mean = sde_step_op(v, x, x_prev, coef, backend="triton")
    low_lp, low_mean = sde_step_reference(v, x, x_prev, coef)
    exact_lp, exact_mean = sde_step_reference(v.double(), x.double(), x_prev.double(), coef.double())
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert log_prob.dtype == acc and prev_mean.dtype == acc and prev_mean.shape == v.shape
    assert_within_flash_rule(log_prob, low_lp, exact_lp, "log_prob")
    assert_within_flash_rule(prev_mean, low_mean, exact_mean, "prev_mean")
    # The forward compiles without FMA fusion: prev_mean rounds exactly as torch's a_x * x + a_v * v.
    assert torch.equal(prev_mean, low_mean)

    g_lp = _randn(n, dtype=acc)
    g_mean = _randn(n, *latent, dtype=acc) if with_grad_mean else None
    grad_v = ops.sde_step_backward_triton(g_lp, g_mean, v, x, x_prev, coef.to(acc))
    low = sde_step_backward_reference(g_lp, g_mean, v, x, x_prev, coef)
    exact = sde_step_backward_reference(
        g_lp.double(), _double(g_mean), v.double(), x.double(), x_prev.double(), coef.double()
    )
    assert grad_v.dtype == dtype
    assert_within_flash_rule(grad_v, low, exact, "grad_v")


def test_sde_step_non_contiguous_several_chunks_deterministic(monkeypatch):
    monkeypatch.setattr(_common, "CHUNK_OVERRIDE", _common.max_block())
    d = 2 * _common.max_block() + 5
    v = _randn(6, d)[::2]
    x = _randn(d, 3).t()
    x_prev = _randn(3, d)
    coef = torch.randn(4, 3, device=DEVICE).t()
    first = ops.sde_step_triton(v, x, x_prev, coef)
    expected = sde_step_reference(v.contiguous(), x.contiguous(), x_prev, coef.contiguous())
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    second = ops.sde_step_triton(v, x, x_prev, coef)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_sde_step_gradcheck_float64():
    v, x, x_prev, coef = _sde_inputs(3, (2, 5), torch.float64)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: ops.sde_step_triton(v, x, x_prev, coef), (v,), fast_mode=True)
    # Only log_prob used downstream: the grad of prev_mean arrives as None.
    assert torch.autograd.gradcheck(lambda v: ops.sde_step_triton(v, x, x_prev, coef)[0], (v,), fast_mode=True)


def test_sde_step_opcheck():
    v, x, x_prev, coef = _sde_inputs(3, (2, 5), torch.float32)
    v.requires_grad_(True)
    torch.library.opcheck(ops.sde_step_triton.default, (v, x, x_prev, coef))
    torch.library.opcheck(
        ops.sde_step_backward_triton.default, (_randn(3), None, v.detach(), x, x_prev, coef)
    )


# ---------------------------------------------------------------- torch.compile

@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_ops_compile_fullgraph_and_match_eager(compile_backend):
    """All four ops in one torch.compile(fullgraph=True) graph, forward and backward.

    Both "aot_eager" and "inductor" (CPU C++ codegen for the glue) trace through
    the fake kernels and the registered autograd; the custom ops themselves run
    as opaque calls (in the interpreter on CPU).
    """
    torch._dynamo.reset()
    n, b, latent = 4, 2, (3, 11)
    x0 = _randn(b, *latent)
    t = torch.rand(n, device=DEVICE)
    v, v_ref = _randn(n, *latent), _randn(n, *latent)
    coef = _sde_inputs(n, latent, torch.float32)[3]

    def loss(v):
        eps = ops.generate_noise_triton(v.detach(), 7, 8)
        x_t = ops.noising_triton(x0, t, None, 2, 7, 8)
        sums = ops.residual_sums_triton(v, x0, eps, None, v_ref, 0.0, 0, 0)
        elbo = -sums[:, COLUMN["S2"]] / sums[:, COLUMN["S1"]].clamp_min(1e-5).detach()
        log_prob, prev_mean = ops.sde_step_triton(v, x_t, x0.repeat_interleave(2, 0), coef)
        return (elbo + 1e-4 * sums[:, COLUMN["K2"]] + log_prob).mean() + prev_mean.mean()

    compiled = torch.compile(loss, fullgraph=True, backend=compile_backend)
    v1 = v.clone().requires_grad_(True)
    v2 = v.clone().requires_grad_(True)
    out_compiled, out_eager = compiled(v1), loss(v2)
    out_compiled.backward()
    out_eager.backward()
    torch.testing.assert_close(out_compiled, out_eager)
    torch.testing.assert_close(v1.grad, v2.grad)


# ---------------------------------------------------------------- launch plumbing


def test_launchers_name_the_argument_on_another_device():
    x0, t = _randn(2, 3, 5), torch.rand(4, device=DEVICE)
    with pytest.raises(ValueError, match="noise is on meta"):
        # The launcher itself (the custom op would route a meta input to its fake kernel).
        _tri_noising.noising_forward(x0, t, torch.empty(4, 3, 5, device="meta"), 2, 0, 0)
    v = _randn(4, 3, 5)
    with pytest.raises(ValueError, match="v_ref is on meta"):
        _tri_sums.residual_sums_forward(v, x0, None, None, torch.empty_like(v, device="meta"), 0.0, 1, 2)


def test_device_guard_makes_the_tensors_cuda_device_current():
    """Triton launches on the current device: the guard switches to the tensors' one (cuda:1 here)."""

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    guard = _common.device_guard("op", v=OnSecondGpu(), x0=OnSecondGpu())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_reductions_run_one_pinned_config_and_elementwise_kernels_autotune():
    """Reduction bits follow BLOCK and num_warps, so those kernels are never autotuned (_common docstring)."""
    from triton.runtime.autotuner import Autotuner

    for kernel in (_tri_sums._residual_sums_fwd_kernel, _tri_sde._sde_step_fwd_kernel):
        assert not isinstance(kernel, Autotuner)
    for kernel in (_tri_sums._residual_sums_bwd_kernel, _tri_sde._sde_step_bwd_kernel, _tri_noise._generate_noise_kernel):
        assert isinstance(kernel, Autotuner)
    assert _tri_noise._generate_noise_kernel.keys == []  # tuned once per dtype, not per shape
    for dtype in DTYPES:
        assert set(_common.reduce_launch(dtype)) == {"BLOCK", "num_warps"}
