"""Every fused op of one backend in one torch.compile(fullgraph=True) graph, forward and backward.

Both "aot_eager" and "inductor" (CPU C++ codegen for the glue) trace through the fake kernels and
the registered autograd of ops/<op>.py; the ops themselves run as opaque calls. Helpers:
tests/ops_cases.py.
"""

import pytest
import torch

from elbo_kernels.ops.residual_sums import COLUMN
from ops_cases import BACKENDS, assert_compiled_matches_eager, device_of, op, randn, sde_inputs


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_compile_fullgraph_and_match_eager(backend, compile_backend):
    device = device_of(backend)
    n, b, latent = 4, 2, (3, 11)
    x0 = randn(b, *latent, device=device)
    t = torch.rand(n, device=device)
    v, v_ref = randn(n, *latent, device=device), randn(n, *latent, device=device)
    coef = sde_inputs(n, latent, torch.float32, device)[3]
    generate_noise, noising = op("generate_noise", backend), op("noising", backend)
    residual_sums, sde_step = op("residual_sums", backend), op("sde_step", backend)

    def loss(v):
        eps = generate_noise(v.detach(), 7, 8)
        x_t = noising(x0, t, None, 2, 7, 8)
        sums = residual_sums(v, x0, eps, None, v_ref, 0.0, 0, 0)
        elbo = -sums[:, COLUMN["S2"]] / sums[:, COLUMN["S1"]].clamp_min(1e-5).detach()
        log_prob, prev_mean = sde_step(v, x_t, x0.repeat_interleave(2, 0), coef)
        return (elbo + 1e-4 * sums[:, COLUMN["K2"]] + log_prob).mean() + prev_mean.mean()

    assert_compiled_matches_eager(loss, v, compile_backend)
