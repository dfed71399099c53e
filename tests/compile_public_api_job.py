"""Run in a fresh process by test_compile_public_api.py: compile the public API before any eager call.

Usage: python compile_public_api_job.py BACKEND DEVICE. Compiles ek.elbo, ek.policy_loss,
ek.sde_step_log_prob and ek.noising with torch.compile(fullgraph=True) (inductor) as the
very first use of the library in this process, then checks values and gradients against the
torch reference backend run eagerly, and that a compiled call still rejects bad values.
Prints "ok" on success; any mismatch raises.
"""

import sys

import torch

import elbo_kernels as ek


def inputs(device, n=6, b=3, shape=(2, 5, 7)):
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    v = rand(n, *shape).requires_grad_(True)
    return dict(v=v, v_old=rand(n, *shape), v_ref=rand(n, *shape), x0=rand(b, *shape), noise=rand(n, *shape),
                t=(torch.rand(n, generator=g) * 0.9 + 0.05).to(device),
                advantages=rand(n), x_prev=rand(n, *shape), x=rand(n, *shape))


def elbo_fn(d, backend):
    return ek.elbo(d["v"], d["x0"], d["noise"], d["t"], weighting="adaptive", backend=backend)


def policy_fn(d, backend):
    loss, stats = ek.policy_loss(d["v"], d["v_old"], d["v_ref"], d["x0"], d["noise"], d["t"], d["advantages"],
                                 objective="pepg", kl="girsanov", beta=0.1, backend=backend)
    return loss, stats["approx_kl"]


def sde_fn(d, backend):
    sigma = d["t"]
    log_prob, prev_mean, _ = ek.sde_step_log_prob(d["v"], d["x"], d["x_prev"], sigma, sigma * 0.8,
                                                  noise_level=0.7, backend=backend)
    return log_prob, prev_mean


def noising_fn(d, backend):
    return ek.noising(d["x0"], d["t"], d["noise"], backend=backend)


def check(name, fn, backend, device):
    d_compiled, d_eager = inputs(device), inputs(device)
    # The Triton noising op registers no autograd formula (eager neither): its value is checked alone.
    grad_x0 = name == "noising" and backend != "triton"
    d_compiled["x0"].requires_grad_(grad_x0)
    d_eager["x0"].requires_grad_(grad_x0)
    out = torch.compile(fn, fullgraph=True)(d_compiled, backend)
    ref = fn(d_eager, "torch")
    out = out if isinstance(out, tuple) else (out,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} value: {m}")
    if name == "noising" and not grad_x0:
        return
    wrt = "x0" if name == "noising" else "v"
    (sum(o.float().sum() for o in out if o.requires_grad)).backward()
    (sum(r.float().sum() for r in ref if r.requires_grad)).backward()
    torch.testing.assert_close(d_compiled[wrt].grad, d_eager[wrt].grad, rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{name} gradient: {m}")


def check_rejects_bad_t(backend, device):
    d = inputs(device)
    d["t"][0] = 1.5
    try:
        torch.compile(elbo_fn, fullgraph=True)(d, backend)
    except RuntimeError as error:
        assert "t must lie in (0, 1]" in str(error), error
    else:
        raise AssertionError("a compiled ek.elbo accepted t = 1.5")
    d = inputs(device)
    d["v_old"][1, 0, 0, 0] = float("nan")
    try:
        torch.compile(policy_fn, fullgraph=True)(d, backend)
    except RuntimeError as error:
        assert "v_old" in str(error), error
    else:
        raise AssertionError("a compiled ek.policy_loss accepted a NaN in v_old")


if __name__ == "__main__":
    backend, device = sys.argv[1], torch.device(sys.argv[2])
    # Nothing of elbo_kernels has run eagerly yet: compiling must register the ops itself.
    for name, fn in (("elbo", elbo_fn), ("policy_loss", policy_fn), ("sde_step_log_prob", sde_fn),
                     ("noising", noising_fn)):
        check(name, fn, backend, device)
    check_rejects_bad_t(backend, device)
    print("ok")
