"""The fused op every ELBO and policy objective is built on: per-draw residual sums.

For draw n (one row of the flat [N, D] view; x0 row n // K), with
u = eps - x0 the target velocity, the op returns, as columns of a [N, 11] tensor:

    S1 = sum |u - v|         S2 = sum (u - v)^2           (current policy)
    O1 = sum |u - v_old|     O2 = sum (u - v_old)^2       (old policy; 0 if v_old is None)
    K2 = sum (v - v_ref)^2                                  (0 if v_ref is None)
    R1 = sum |u - v_ref|     R2 = sum (u - v_ref)^2       (0 if v_ref is None)
    P1 = sum |r+|            P2 = sum r+^2                 (DiffusionNFT; 0 unless nft_beta > 0)
    M1 = sum |r-|            M2 = sum r-^2
    with r = u - v, r_old = u - v_old, g = nft_beta,
         r+ = g r + (1 - g) r_old          (residual of v+ = g v + (1 - g) v_old)
         r- = (1 + g) r_old - g r          (residual of v- = (1 + g) v_old - g v)

Sums are float32 for float16 / bfloat16 / float32 inputs and float64 for
float64 inputs. Gradients flow to ``v`` only, and only through S2, K2, P2 and
M2 (the L1 sums feed the stop-gradient adaptive weight). The backward is one
elementwise pass:

    dL/dv = gS2 * (-2 r) + gK2 * 2 (v - v_ref) + gP2 * (-2 g) r+ + gM2 * (2 g) r-

Bytes moved (E = element size, N*D elements per big tensor): forward reads v,
v_old, v_ref, eps ((3 + 1) N D E) and x0 (B D E), writes 11 N * 4; backward
reads v, v_old (nft only), v_ref, eps, x0 and writes dL/dv (N D E).

``noise`` is the eps tensor [N, *S], or a :class:`NoiseSeed` from which the
backends regenerate eps in-kernel (see ops/noise.py), so eps need not be stored
between noising and loss.

This file owns the op on every backend: the reference, the fake kernel and the
autograd formula, registered for the C++/CUDA op ``elbo_kernels::residual_sums``
(csrc/) and for ``elbo_kernels::residual_sums_triton``, defined here with its
body in ops/_triton/residual_sums.py.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ._backends import fused_op
from ._base import accumulation_dtype, draws_per_sample, on_cpp_load
from .noise import NoiseSeed, generate_noise

SUM_NAMES = ("S1", "S2", "O1", "O2", "K2", "R1", "R2", "P1", "P2", "M1", "M2")
NUM_SUMS = len(SUM_NAMES)
COLUMN = {name: i for i, name in enumerate(SUM_NAMES)}


def _rows(x: torch.Tensor, draws: int, dtype: torch.dtype) -> torch.Tensor:
    """Flat [rows, D] view in the accumulation dtype; x0 rows repeated K = ``draws`` times."""
    x = x.reshape(x.shape[0], -1).to(dtype)
    return x.repeat_interleave(draws, dim=0) if draws > 1 else x


def residual_sums_reference(
    v: torch.Tensor,
    x0: torch.Tensor,
    noise: Union[torch.Tensor, NoiseSeed],
    v_old: Optional[torch.Tensor] = None,
    v_ref: Optional[torch.Tensor] = None,
    nft_beta: float = 0.0,
) -> torch.Tensor:
    """Pure-PyTorch residual sums; differentiable in ``v`` through autograd.

    Eager cost: materialises u, r, r_old, r_ref, r+, r- and their squares as
    [N, D] temporaries (the passes the fused kernels avoid).
    """
    n = v.shape[0]
    k = draws_per_sample(n, x0)
    acc = accumulation_dtype(v.dtype)
    if isinstance(noise, NoiseSeed):
        noise = generate_noise(v.shape, noise, device=v.device, backend="torch")
    v2 = _rows(v, 1, acc)
    # Gradients flow to v only: x0 and eps are data, as in the fused kernels.
    u = (_rows(noise, 1, acc) - _rows(x0, k, acc)).detach()
    r = u - v2
    zero = torch.zeros(n, dtype=acc, device=v.device)
    cols = dict.fromkeys(SUM_NAMES, zero)
    cols["S1"] = r.detach().abs().sum(1)
    cols["S2"] = r.square().sum(1)
    if v_old is not None:
        r_old = u - _rows(v_old, 1, acc).detach()
        cols["O1"] = r_old.abs().sum(1)
        cols["O2"] = r_old.square().sum(1)
        if nft_beta > 0:
            g = nft_beta
            r_plus = g * r + (1 - g) * r_old
            r_minus = (1 + g) * r_old - g * r
            cols["P1"] = r_plus.detach().abs().sum(1)
            cols["P2"] = r_plus.square().sum(1)
            cols["M1"] = r_minus.detach().abs().sum(1)
            cols["M2"] = r_minus.square().sum(1)
    if v_ref is not None:
        ref = _rows(v_ref, 1, acc).detach()
        cols["K2"] = (v2 - ref).square().sum(1)
        r_ref = u - ref
        cols["R1"] = r_ref.abs().sum(1)
        cols["R2"] = r_ref.square().sum(1)
    return torch.stack([cols[name] for name in SUM_NAMES], dim=1)


def residual_sums(
    v: torch.Tensor,
    x0: torch.Tensor,
    noise: Union[torch.Tensor, NoiseSeed],
    v_old: Optional[torch.Tensor] = None,
    v_ref: Optional[torch.Tensor] = None,
    *,
    nft_beta: float = 0.0,
    backend: str = "torch",
) -> torch.Tensor:
    """Per-draw residual sums [N, 11] on a concrete backend (see module docstring).

    Inputs are assumed validated by the caller (the public API does it):
    v, v_old, v_ref, noise [N, *S] of one dtype and device; x0 [B, *S] with
    N = B * K. ``backend`` is one of "torch", "cpu", "cuda", "triton".
    """
    op = fused_op("residual_sums", backend)
    if op is None:  # the torch backend
        return residual_sums_reference(v, x0, noise, v_old, v_ref, nft_beta)
    seed, offset = (noise.seed, noise.offset) if isinstance(noise, NoiseSeed) else (0, 0)
    tensor_noise = None if isinstance(noise, NoiseSeed) else noise
    return op(v, x0, tensor_noise, v_old, v_ref, float(nft_beta), int(seed), int(offset))


def residual_sums_backward_reference(
    grad_sums: torch.Tensor,
    v: torch.Tensor,
    x0: torch.Tensor,
    noise: Union[torch.Tensor, NoiseSeed],
    v_old: Optional[torch.Tensor] = None,
    v_ref: Optional[torch.Tensor] = None,
    nft_beta: float = 0.0,
) -> torch.Tensor:
    """dL/dv in v's dtype from the closed form in the module docstring."""
    k = draws_per_sample(v.shape[0], x0)
    acc = accumulation_dtype(v.dtype)
    if isinstance(noise, NoiseSeed):
        noise = generate_noise(v.shape, noise, device=v.device, backend="torch")
    g = grad_sums.to(acc)
    col = lambda name: g[:, COLUMN[name]].unsqueeze(1)  # noqa: E731
    v2 = _rows(v, 1, acc)
    r = _rows(noise, 1, acc) - _rows(x0, k, acc) - v2
    grad = col("S2") * (-2 * r)
    if v_ref is not None:
        grad = grad + col("K2") * 2 * (v2 - _rows(v_ref, 1, acc))
    if v_old is not None and nft_beta > 0:
        beta = nft_beta
        r_old = _rows(noise, 1, acc) - _rows(x0, k, acc) - _rows(v_old, 1, acc)
        r_plus = beta * r + (1 - beta) * r_old
        r_minus = (1 + beta) * r_old - beta * r
        grad = grad + col("P2") * (-2 * beta) * r_plus + col("M2") * (2 * beta) * r_minus
    return grad.reshape(v.shape).to(v.dtype)


# ---------------------------------------------------------------- registrations on every backend


def _residual_sums_fake(v, x0, noise, v_old, v_ref, nft_beta, seed, offset):
    return v.new_empty((v.shape[0], NUM_SUMS), dtype=accumulation_dtype(v.dtype))


def _residual_sums_backward_fake(grad_sums, v, x0, noise, v_old, v_ref, nft_beta, seed, offset):
    return v.new_empty(v.shape)


def _register_autograd(op_name: str, backward_op) -> None:
    """Gradient of a backend's residual-sums op ``op_name``: one call of its ``backward_op``, to v only
    (v_old and v_ref are stop-gradient policies; x0 and eps are data)."""

    def setup_context(ctx, inputs, output):
        v, x0, noise, v_old, v_ref, nft_beta, seed, offset = inputs
        ctx.save_for_backward(v, x0, noise, v_old, v_ref)
        ctx.scalars = (nft_beta, seed, offset)

    def backward(ctx, grad_sums):
        v, x0, noise, v_old, v_ref = ctx.saved_tensors
        grad_v = backward_op(grad_sums, v, x0, noise, v_old, v_ref, *ctx.scalars) if ctx.needs_input_grad[0] else None
        return grad_v, None, None, None, None, None, None, None

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


def _register_cpp() -> None:
    """The C++/CUDA ops (schemas in csrc/elbo_ops.cpp) get their fakes and autograd once loaded."""
    torch.library.register_fake("elbo_kernels::residual_sums", _residual_sums_fake)
    torch.library.register_fake("elbo_kernels::residual_sums_backward", _residual_sums_backward_fake)
    _register_autograd("elbo_kernels::residual_sums", torch.ops.elbo_kernels.residual_sums_backward)


on_cpp_load(_register_cpp)


@torch.library.custom_op(
    "elbo_kernels::residual_sums_triton",
    mutates_args=(),
    schema="(Tensor v, Tensor x0, Tensor? noise, Tensor? v_old, Tensor? v_ref, "
    "float nft_beta, int seed, int offset) -> Tensor",
)
def residual_sums_triton(
    v: torch.Tensor,
    x0: torch.Tensor,
    noise: Optional[torch.Tensor],
    v_old: Optional[torch.Tensor],
    v_ref: Optional[torch.Tensor],
    nft_beta: float,
    seed: int,
    offset: int,
) -> torch.Tensor:
    from ._triton import residual_sums as kernels  # imports triton on first use

    return kernels.residual_sums_forward(v, x0, noise, v_old, v_ref, nft_beta, seed, offset)


@torch.library.custom_op(
    "elbo_kernels::residual_sums_backward_triton",
    mutates_args=(),
    schema="(Tensor grad_sums, Tensor v, Tensor x0, Tensor? noise, Tensor? v_old, Tensor? v_ref, "
    "float nft_beta, int seed, int offset) -> Tensor",
)
def residual_sums_backward_triton(
    grad_sums: torch.Tensor,
    v: torch.Tensor,
    x0: torch.Tensor,
    noise: Optional[torch.Tensor],
    v_old: Optional[torch.Tensor],
    v_ref: Optional[torch.Tensor],
    nft_beta: float,
    seed: int,
    offset: int,
) -> torch.Tensor:
    from ._triton import residual_sums as kernels

    return kernels.residual_sums_backward(grad_sums, v, x0, noise, v_old, v_ref, nft_beta, seed, offset)


residual_sums_triton.register_fake(_residual_sums_fake)
residual_sums_backward_triton.register_fake(_residual_sums_backward_fake)
_register_autograd("elbo_kernels::residual_sums_triton", residual_sums_backward_triton)
