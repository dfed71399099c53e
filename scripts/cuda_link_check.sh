#!/usr/bin/env bash
# Link check of the CUDA extension, no GPU needed: builds csrc/ (CPU and CUDA
# kernels, linked) against the CUDA build of the pinned torch, loads it, and
# checks that every op has a CUDA kernel registered. Run it before any change
# to csrc/ lands; scripts/compile_cuda.sh (compile-only, in CI) does not link.
#
# Usage: scripts/cuda_link_check.sh [VENV]    (default: .cuda-link-venv, reused if present)
#
# The venv gets torch==2.13.0 from PyPI (the +cu130 wheel, about 2.7 GB on first
# run; PIP_FIND_LINKS and pip.conf are ignored so a local CPU wheel cannot win),
# the library without its dependencies, ninja and numpy. Architectures:
# TORCH_CUDA_ARCH_LIST (default "8.0;9.0"). CUDA_HOME: as the library finds it
# (elbo_kernels/ops/_cpp.py cuda_home()), or set it. Measured on 2 cores: about
# 3 minutes for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.cuda-link-venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null pip install -q --force-reinstall "$TORCH_SPEC"
fi
pip install -q ninja numpy
pip install -q --no-deps -e .

export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cuda-link-venv-ext}"
export ELBO_KERNELS_REQUIRE_CPP=1 ELBO_KERNELS_BUILD_CUDA=1
start=$(date +%s)
python - <<'EOF'
import torch

from elbo_kernels.ops import _cpp

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPU visible: {torch.cuda.is_available()}")
print("cuda_home:", _cpp.cuda_home())
status = _cpp.cuda_status()  # builds (or reuses) and loads; raises with the cause under REQUIRE_CPP
print("cuda:", status)
ops = ("residual_sums", "residual_sums_backward", "noising", "generate_noise", "sde_step", "sde_step_backward")
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"elbo_kernels::{op}", "CUDA")]
if missing:
    raise SystemExit(f"no CUDA kernel registered for: {', '.join(missing)}")
print(f"linked and loaded; CUDA kernels registered for all {len(ops)} ops")
EOF
echo "cuda link check passed in $(( $(date +%s) - start )) s"
