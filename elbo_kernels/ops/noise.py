"""Counter-based Gaussian noise: eps regenerated from (seed, offset) instead of stored.

Why: the ELBO loss needs the eps that noised x0. Storing eps costs one [N, D]
tensor between noising and loss; a counter-based generator lets every kernel
that needs eps recompute it from two integers, the way FlashAttention
regenerates its dropout mask.

Specification (the same bits on every backend)
-----------------------------------------------
For the flat, row-major element index ``i`` of an [N, *S] tensor
(``i = n * D + d``, D = prod(S)), ``eps[i]`` is
``triton.language.randn(seed, offset + i)`` of triton 3.9, spelled out:

1. Key. ``seed`` is a non-negative integer < 2**63, taken as uint64:
   ``k0 = seed & 0xFFFFFFFF`` (low word), ``k1 = seed >> 32`` (high word).
2. Counter. ``c = offset + i`` as a 64-bit integer (``offset + numel <= 2**63``
   is required, so it never wraps): ``c0 = c & 0xFFFFFFFF``, ``c1 = c >> 32``,
   ``c2 = c3 = 0``. (In the kernels ``offset + i`` must be an int64 expression:
   triton only fills ``c1`` from the high word when the offset is 64-bit.)
3. Philox4x32-10: ten rounds, all arithmetic on uint32 (mod 2**32), with
   ``A = 0xD2511F53``, ``B = 0xCD9E8D57`` and, per round::

       c0, c1, c2, c3 = (mulhi(B, c2) ^ c1 ^ k0,  lo(B * c2),
                         mulhi(A, c0) ^ c3 ^ k1,  lo(A * c0))      # old c0, c2 on the right
       k0 += 0x9E3779B9;  k1 += 0xBB67AE85                          # after the round

   ``mulhi(a, b)`` is the high 32 bits and ``lo(a * b)`` the low 32 bits of the
   64-bit product. The key is bumped after each round, so round 1 uses the
   original key. Only the first two outputs ``c0, c1`` are used.
4. Uniforms (``uint_to_uniform_float``): each 32-bit output ``x`` is
   reinterpreted as int32; if negative it is replaced by ``~x`` (= -x - 1),
   giving an integer ``m`` in [0, 2**31 - 1]; then
   ``u = float32(m) * float32(4.6566127342e-10)`` (float32 conversion rounds to
   nearest, one float32 multiply). So ``u1`` from ``c0`` and ``u2`` from ``c1``,
   both in [0, 1).
5. Box-Muller (``pair_uniform_to_normal``), all float32::

       u1  = max(float32(1e-7), u1)
       th  = float32(6.283185307179586) * u2
       r   = sqrt(-2 * log(u1))
       eps = r * cos(th)                                 # the sin branch is discarded

Steps 1-4 are exact integer/IEEE operations and agree bit for bit on every
backend. Step 5 uses float32 ``log`` and ``cos``, whose last bit depends on the
math library (numpy in the Triton interpreter, libdevice / approximate
instructions on a GPU, SLEEF or libm in torch); eps therefore agrees across
backends to within a few float32 ulp, not necessarily bitwise. The torch
reference here evaluates log, sqrt and cos in float64 and rounds each to float32
(i.e. correctly rounded float32 functions in almost every case).

The result is float32; ``dtype`` casts it. Ops that consume a NoiseSeed
(residual sums, noising) use the float32 eps directly (cast up to float64 for
float64 inputs), never rounded to a low-precision input dtype.

Statistical checks (tests/test_noise.py): on 2**20 samples the mean is within
5 standard errors of 0 (SE = 1/sqrt(n)), the variance within 5 standard errors
of 1 (SE = sqrt(2/n) for a normal), the Kolmogorov-Smirnov and D'Agostino-Pearson
tests against N(0, 1) do not reject at p = 1e-4, and the lag-1 autocorrelation
of the flat stream is within 5/sqrt(n) of 0.

Bytes: generating writes numel * 4 bytes and reads nothing.

This file owns the generator on every backend: the torch reference, the fake
kernels of the C++/CUDA op ``elbo_kernels::generate_noise`` (csrc/; eps in the
accumulation dtype of ``like``) and of ``elbo_kernels::generate_noise_triton``
(defined here, body in ops/_triton/noise.py; eps in like's dtype). Neither has a
gradient: eps is data.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ._backends import CONCRETE_BACKENDS, fused_op
from ._base import accumulation_dtype, check_choice, on_cpp_load

_MASK32 = 0xFFFFFFFF
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_ROUNDS = 10
_UNIFORM_SCALE = 4.6566127342e-10  # largest scale with (2**31 - 1) * scale < 1 in float32
_TWO_PI = 6.283185307179586
_MIN_UNIFORM = 1.0e-7
_LIMIT = 2**63
# Elements per chunk of the torch reference: about 10 int64 temporaries each, so
# ~80 MiB of scratch at most whatever the requested size.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class NoiseSeed:
    """Stands in for an eps tensor: eps is regenerated from (seed, offset) in-kernel."""

    seed: int
    offset: int = 0


def _check_index(name: str, value) -> int:
    """An integer (anything with __index__, e.g. numpy ints; not bool) in [0, 2**63)."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = operator.index(value)
    if not 0 <= value < _LIMIT:
        raise ValueError(f"{name} must be a non-negative integer < 2**63, got {value}")
    return value


def check_noise_seed(noise_seed, numel: int) -> NoiseSeed:
    """Validate a NoiseSeed for a tensor of ``numel`` elements (counters must not wrap).

    Raises TypeError if it is not a NoiseSeed or its fields are not ints, and
    ValueError if seed/offset are outside [0, 2**63) or offset + numel > 2**63.
    """
    if not isinstance(noise_seed, NoiseSeed):
        raise TypeError(f"noise_seed must be a NoiseSeed(seed, offset), got {type(noise_seed).__name__}")
    seed = _check_index("noise_seed.seed", noise_seed.seed)
    offset = _check_index("noise_seed.offset", noise_seed.offset)
    if offset + numel > _LIMIT:
        raise ValueError(
            f"noise_seed.offset + numel must be <= 2**63 so the 64-bit counter does not wrap, "
            f"got offset {offset} and {numel} elements"
        )
    return NoiseSeed(seed, offset)


def _check_shape(shape) -> tuple:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or any(
        isinstance(s, bool) or not isinstance(s, int) for s in shape
    ):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {tuple(shape)}")
    return tuple(shape)


def _mul_hi_lo(a: torch.Tensor, constant: int):
    """(high, low) 32-bit words of a * constant, a uint32 held in int64, without overflow.

    The constant is split into 16-bit halves so every partial product is < 2**48.
    """
    c_hi, c_lo = constant >> 16, constant & 0xFFFF
    p_lo = a * c_lo
    p_hi = a * c_hi
    # a * constant = p_hi * 2**16 + p_lo; floor(. / 2**32) nests through the shifts.
    high = (p_hi + (p_lo >> 16)) >> 16
    low = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return high, low


def philox_reference(seed: int, counter: torch.Tensor):
    """First two Philox4x32-10 output words (c0, c1) for int64 counters; uint32 in int64."""
    k0, k1 = seed & _MASK32, seed >> 32
    c0 = counter & _MASK32
    c1 = counter >> 32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, _PHILOX_ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1


def uint32_to_uniform_reference(x: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float for uint32 words held in int64: float32 in [0, 1)."""
    m = torch.where(x >= 2**31, _MASK32 - x, x)  # ~int32(x) for the negative half
    return m.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=x.device)


def _box_muller_first(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    f32 = torch.float32
    u1 = torch.clamp_min(u1, torch.tensor(_MIN_UNIFORM, dtype=f32).item())
    th = torch.tensor(_TWO_PI, dtype=f32, device=u2.device) * u2
    log_u1 = u1.double().log().to(f32)
    r = (-2.0 * log_u1).double().sqrt().to(f32)  # -2 * x is exact in float32
    return r * th.double().cos().to(f32)


def _randn_reference(numel: int, seed: int, offset: int, device) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.float32, device=device)
    for start in range(0, numel, _CHUNK):
        stop = min(numel, start + _CHUNK)
        counter = torch.arange(offset + start, offset + stop, dtype=torch.int64, device=device)
        c0, c1 = philox_reference(seed, counter)
        out[start:stop] = _box_muller_first(uint32_to_uniform_reference(c0), uint32_to_uniform_reference(c1))
    return out


def generate_noise(
    shape: Sequence[int],
    noise_seed: NoiseSeed,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    backend: str = "torch",
) -> torch.Tensor:
    """eps of the given shape from ``noise_seed`` (see the module docstring for the bits).

    Args:
        shape: [N, *S] (any sequence of non-negative ints; flat index is row-major).
        noise_seed: NoiseSeed(seed, offset), 0 <= seed, offset < 2**63 and
            offset + numel <= 2**63.
        device: where to create eps (default: torch's default device).
        dtype: floating dtype of the result (default float32; values are the
            float32 eps cast to it).
        backend: "torch" (pure-torch Philox, the reference), "cpu" / "cuda"
            (C++ extension) or "triton" (Triton kernel; CUDA, or CPU under
            TRITON_INTERPRET=1).

    Returns:
        Tensor of ``shape``, ``dtype`` (float32 by default) on ``device``.

    Raises:
        TypeError: shape not ints, noise_seed not a NoiseSeed (or non-int fields),
            dtype not floating.
        ValueError: negative sizes, seed/offset out of range, unknown backend.
    """
    shape = _check_shape(shape)
    numel = 1
    for s in shape:
        numel *= s
    noise_seed = check_noise_seed(noise_seed, numel)
    if dtype is None:
        dtype = torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    check_choice("backend", backend, CONCRETE_BACKENDS)
    device = torch.device(device) if device is not None else torch.empty(0).device
    op = fused_op("generate_noise", backend)
    if op is None:  # the torch backend
        eps = _randn_reference(numel, noise_seed.seed, noise_seed.offset, device).reshape(shape)
        return eps if dtype == torch.float32 else eps.to(dtype)
    # The ops only read like's shape and device; an expanded scalar costs no memory.
    like = torch.empty((), dtype=torch.float32, device=device).expand(shape)
    eps = op(like, int(noise_seed.seed), int(noise_seed.offset))
    return eps.to(dtype)


# ---------------------------------------------------------------- registrations on every backend


def _generate_noise_fake(like, seed, offset):
    return like.new_empty(like.shape, dtype=accumulation_dtype(like.dtype))


def _register_cpp() -> None:
    """The C++/CUDA op (schema in csrc/elbo_ops.cpp) gets its fake once loaded."""
    torch.library.register_fake("elbo_kernels::generate_noise", _generate_noise_fake)


on_cpp_load(_register_cpp)


@torch.library.custom_op(
    "elbo_kernels::generate_noise_triton",
    mutates_args=(),
    schema="(Tensor like, int seed, int offset) -> Tensor",
)
def generate_noise_triton(like: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    from ._triton import noise as kernels  # imports triton on first use

    return kernels.generate_noise_forward(like, seed, offset)


@generate_noise_triton.register_fake
def _(like, seed, offset):
    return torch.empty(like.shape, dtype=like.dtype, device=like.device)


def _eps_is_data(ctx, inputs, output):
    ctx.mark_non_differentiable(output)


def _no_gradient(ctx, grad_eps):
    return None, None, None


# As the C++ op (no autograd kernel): eps never requires grad, whatever ``like`` does.
torch.library.register_autograd("elbo_kernels::generate_noise_triton", _no_gradient, setup_context=_eps_is_data)
