"""The GPU subset (``pytest -m gpu``): the fused backends on CUDA tensors, run by scripts/gpu_check.py.

Skipped without a CUDA device, except in the device check's rehearsal
(ELBO_KERNELS_REHEARSE=1, CI): there every test body runs on CPU tensors, the
Triton kernels in the interpreter and the C++ CPU kernels standing in for the
CUDA ones (they share csrc/elbo_math.h), at smaller sizes, so that the script a
GPU machine runs once cannot fail on a typo. With TRITON_INTERPRET=0 the per-op
backend tests (tests/test_op_*.py) run on the GPU too; this file adds what only a
GPU can show: ek.policy_loss on each GPU backend against the torch backend, the
bitwise contracts with real FMA-capable hardware, the same bits in two processes
(each autotuning afresh), noise statistics, opcheck and torch.compile on CUDA,
and a launch at SD3 size.

Tolerance (flash-attention's rule, as in the backend tests): a backend's error
against the float64 torch evaluation may be at most twice the float32 torch
backend's, plus a floor of 8 float32 ulps of the result's scale. Where the
kernels promise one rounding (bf16 outputs computed in float32), the bound is
elementwise: one bf16 ulp of the float64 truth.
"""

import os
import subprocess
import sys

import pytest
import torch

import elbo_kernels as ek
from elbo_kernels.ops.noise import NoiseSeed, generate_noise

REHEARSE = os.environ.get("ELBO_KERNELS_REHEARSE") == "1"
ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (ON_GPU or REHEARSE), reason="needs a CUDA GPU (scripts/gpu_check.sh)"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The GPU backends; in the CPU rehearsal the C++ CPU kernels stand in for the CUDA ones.
GPU_BACKENDS = ("triton", "cuda") if ON_GPU else ("triton", "cpu")
# SD3.5-M at 512 px is [N, 16, 64, 64]; the rehearsal runs the same code at a size the interpreter affords.
SD3_LATENT = (16, 64, 64) if ON_GPU else (4, 8, 8)


def _backend_or_skip(backend):
    if backend == "triton" and ON_GPU and os.environ.get("TRITON_INTERPRET", "0") == "1":
        pytest.skip("TRITON_INTERPRET=1: the Triton kernels would run in the interpreter, not on the GPU")
    status = ek.available_backends()[backend]
    if not status:
        pytest.fail(f"backend {backend} not usable on this machine: {status.reason}")


def _loss_cases():
    """The policy-loss settings the kernels can tell apart: what reaches the fused residual sums is
    whether v_old and v_ref are read and whether the NFT blend is on; objective, weighting and KL are
    [N]-sized torch on top (checked 288 ways against the naive reference on CPU). Every objective
    once, every weighting once and every KL (and none) once; nothing of the tables is left out."""
    cases = [("pepg", "adaptive", "girsanov")]
    cases += [(o, "adaptive", "girsanov") for o in ek.OBJECTIVES]
    cases += [("pepg", w, "girsanov") for w in ek.WEIGHTINGS]
    cases += [("pepg", "adaptive", kl) for kl in (None,) + tuple(ek.KL_ESTIMATORS)]
    return list(dict.fromkeys(cases))


def _inputs(n, b, latent, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)

    x0, eps = randn(b, *latent), randn(n, *latent)
    v = eps - x0.repeat_interleave(n // b, 0) + 0.3 * randn(n, *latent)
    return dict(v=v, v_old=v + 0.01 * randn(n, *latent), v_ref=v + 0.02 * randn(n, *latent), x0=x0, noise=eps,
                t=torch.rand(n, generator=g).to(DEVICE) * 0.9 + 0.05,
                advantages=torch.randn(n, generator=g).to(DEVICE))


def _loss_and_grad(inp, backend, dtype=None, **kw):
    cast = (lambda x: x.to(dtype)) if dtype else (lambda x: x)
    v = cast(inp["v"]).detach().requires_grad_(True)
    loss, _ = ek.policy_loss(v, cast(inp["v_old"]), cast(inp["v_ref"]), cast(inp["x0"]), cast(inp["noise"]),
                             inp["t"], inp["advantages"], backend=backend, **kw)
    (grad,) = torch.autograd.grad(loss, v)
    return loss.detach(), grad


def _assert_flash(got, torch_low, truth, name):
    ref = truth.double()
    err = (got.double() - ref).abs().max().item()
    torch_err = (torch_low.double() - ref).abs().max().item()
    floor = 8 * 2.0**-23 * max(ref.abs().max().item(), 1.0)
    assert err <= 2 * torch_err + floor, f"{name}: backend error {err:g}, torch {torch_err:g}"


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at |x| (8 significant bits), in float64."""
    _, exponent = torch.frexp(x.double().abs())
    return torch.ldexp(torch.ones_like(x, dtype=torch.float64), exponent - 8)


def test_bf16_ulp_is_the_spacing_of_bfloat16():
    x = torch.tensor([1.0, 1.5, 3.0, -0.1, 1000.0], dtype=torch.float64)
    above = torch.nextafter(x.bfloat16().abs(), torch.tensor(float("inf"), dtype=torch.bfloat16)).double()
    torch.testing.assert_close(bf16_ulp(x.bfloat16()), above - x.bfloat16().abs().double())


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("objective,weighting,kl", _loss_cases(), ids=str)
def test_policy_loss_on_the_gpu_matches_torch(objective, weighting, kl, backend):
    _backend_or_skip(backend)
    inp = _inputs(6, 3, (4, 9, 7), torch.float32)
    kw = dict(objective=objective, weighting=weighting, kl=kl, beta=0.05)
    if objective == "nft":
        inp["advantages"] = inp["advantages"].sigmoid()  # an optimality probability in [0, 1]
    loss, grad = _loss_and_grad(inp, backend, **kw)
    loss_low, grad_low = _loss_and_grad(inp, "torch", **kw)
    loss64, grad64 = _loss_and_grad(inp, "torch", dtype=torch.float64, **kw)
    _assert_flash(loss, loss_low, loss64, "loss")
    _assert_flash(grad, grad_low, grad64, "grad")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_policy_loss_is_bitwise_deterministic(backend, dtype):
    _backend_or_skip(backend)
    inp = _inputs(8, 4, (16, 33), dtype)
    first, second = (_loss_and_grad(inp, backend) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_noising_on_the_gpu_equals_torch_bitwise(backend, dtype):
    """No FMA contraction: x_t rounds like (1 - t) * x0 + t * eps in torch (the kernels' EXACT choice)."""
    _backend_or_skip(backend)
    inp = _inputs(8, 4, (16, 33), dtype)
    got = ek.noising(inp["x0"], inp["t"], inp["noise"], backend=backend)
    assert torch.equal(got, ek.noising(inp["x0"], inp["t"], inp["noise"], backend="torch"))


# The Triton kernels take a noise tensor in v's dtype; the C++/CUDA ones also take float32 eps for 16-bit v.
@pytest.mark.parametrize("backend,dtype", [(GPU_BACKENDS[0], torch.float32), (GPU_BACKENDS[1], torch.float32),
                                           (GPU_BACKENDS[1], torch.bfloat16)], ids=str)
def test_noise_seed_on_the_gpu_equals_its_generated_tensor_bitwise(backend, dtype):
    """No FMA contraction: eps regenerated in-kernel gives the bits of the stored eps tensor."""
    _backend_or_skip(backend)
    from elbo_kernels.ops.residual_sums import residual_sums

    inp = _inputs(8, 4, (16, 65), dtype)
    seed = NoiseSeed(2**40 + 5, 2**33 + 3)
    eps = generate_noise(inp["v"].shape, seed, device=DEVICE, dtype=torch.float32, backend=backend)
    rest = (inp["v_old"], inp["v_ref"])
    from_seed = residual_sums(inp["v"], inp["x0"], seed, *rest, nft_beta=0.3, backend=backend)
    from_tensor = residual_sums(inp["v"], inp["x0"], eps, *rest, nft_beta=0.3, backend=backend)
    assert torch.equal(from_seed, from_tensor)


_TWO_PROCESS_JOB = r"""
import hashlib, sys, torch
import elbo_kernels as ek
from elbo_kernels.ops.residual_sums import residual_sums
backend, device, rows, latent = sys.argv[1], sys.argv[2], int(sys.argv[3]), eval(sys.argv[4])
g = torch.Generator().manual_seed(1)
v, x0, v_old, v_ref = (torch.randn(rows, *latent, generator=g).to(device).bfloat16() for _ in range(4))
sums = residual_sums(v, x0, ek.NoiseSeed(3, 4), v_old, v_ref, nft_beta=0.3, backend=backend)
sigma, sigma_prev = torch.full((rows,), 0.7).to(device), torch.full((rows,), 0.6).to(device)
log_prob, mean, _ = ek.sde_step_log_prob(v, x0, v_old, sigma, sigma_prev, backend=backend)
print(hashlib.sha256(sums.cpu().numpy().tobytes() + log_prob.cpu().numpy().tobytes()).hexdigest())
"""


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_reductions_give_the_same_bits_in_two_processes(backend):
    """Each process autotunes afresh; the reductions run pinned configs, so the bits must agree."""
    _backend_or_skip(backend)
    rows = 24 if ON_GPU else 4
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    digests = [
        subprocess.run([sys.executable, "-c", _TWO_PROCESS_JOB, backend, DEVICE, str(rows), repr(SD3_LATENT)],
                       cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        for _ in range(2)
    ]
    assert digests[0] == digests[1]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_noise_on_the_gpu_is_standard_normal(backend):
    _backend_or_skip(backend)
    n = 1 << (22 if ON_GPU else 14)
    eps = generate_noise((n,), NoiseSeed(11, 2**62 + 1), device=DEVICE, dtype=torch.float32, backend=backend)
    eps = eps.double()
    # 6 standard errors: mean (1/sqrt(n)), variance (sqrt(2/n)), fourth moment (sqrt(96/n)).
    assert abs(eps.mean().item()) < 6 / n**0.5
    assert abs(eps.var().item() - 1) < 6 * (2 / n) ** 0.5
    assert abs((eps**4).mean().item() - 3) < 6 * (96 / n) ** 0.5
    # Against the correctly rounded reference: the elementwise bound of tests/test_op_noise.py.
    reference = generate_noise((4096,), NoiseSeed(11, 2**62 + 1), device=DEVICE, backend="torch").double()
    assert ((eps[:4096] - reference).abs() <= 5 * 2.0**-23 * reference.abs() * (1 + 1e-3) + 1e-30).all()


def test_opcheck_and_compile_on_the_gpu():
    torch._dynamo.reset()
    for backend in GPU_BACKENDS:
        _backend_or_skip(backend)
    ops = torch.ops.elbo_kernels
    inp = _inputs(4, 2, (3, 7), torch.float32)
    args = (inp["v"].requires_grad_(True), inp["x0"], inp["noise"], inp["v_old"], inp["v_ref"], 0.3, 1, 2)
    torch.library.opcheck(ops.residual_sums_triton.default, args)
    torch.library.opcheck(ops.residual_sums.default, args)
    torch.library.opcheck(ops.noising_triton.default, (inp["x0"], inp["t"], None, 2, 5, 6))
    torch.library.opcheck(ops.noising.default, (inp["x0"], inp["t"], None, 2, 5, 6))

    def loss(v, backend):
        return ek.policy_loss(v, inp["v_old"], inp["v_ref"], inp["x0"], inp["noise"], inp["t"], inp["advantages"],
                              backend=backend)[0]

    for backend in GPU_BACKENDS:
        compiled = torch.compile(loss, fullgraph=True)
        v1, v2 = (inp["v"].detach().clone().requires_grad_(True) for _ in range(2))
        out_c, out_e = compiled(v1, backend), loss(v2, backend)
        out_c.backward()
        out_e.backward()
        torch.testing.assert_close(out_c, out_e)
        torch.testing.assert_close(v1.grad, v2.grad)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_policy_loss_at_sd3_size(backend):
    """[432, 16, 64, 64] bf16 (48 prompts x 9 draws at 512 px), forward and backward, against torch.

    The loss by the flash rule; the bf16 gradient elementwise: the kernel computes it in float32
    and rounds once, so each element is within half a bf16 ulp of the truth plus float32 error
    far below it; one bf16 ulp of the float64 truth (plus 2^-20 of the largest element, for
    elements that cancel to near zero) bounds every one of the 28M elements.
    """
    _backend_or_skip(backend)
    n, b = (432, 48) if ON_GPU else (18, 2)
    inp = _inputs(n, b, SD3_LATENT, torch.bfloat16)
    loss, grad = _loss_and_grad(inp, backend)
    loss_low, _ = _loss_and_grad(inp, "torch")
    loss64, grad64 = _loss_and_grad(inp, "torch", dtype=torch.float64)
    _assert_flash(loss, loss_low, loss64, "loss")
    assert grad.dtype == torch.bfloat16
    err = (grad.double() - grad64).abs()
    bound = bf16_ulp(grad64) + 2.0**-20 * grad64.abs().max()
    worst = (err - bound).max().item()
    assert worst <= 0, f"grad: {int((err > bound).sum())} elements beyond one bf16 ulp (worst excess {worst:g})"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_tensors_on_the_second_gpu_run_there(backend):
    _backend_or_skip(backend)
    inp = _inputs(4, 2, (5, 33), torch.float32)
    on_1 = {k: v.to("cuda:1") for k, v in inp.items()}
    with torch.cuda.device(0):
        got = ek.noising(on_1["x0"], on_1["t"], on_1["noise"], backend=backend)
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), ek.noising(inp["x0"], inp["t"], inp["noise"], backend="torch").cpu())
