#!/usr/bin/env bash
# Compile-only check of the CUDA kernels (csrc/cuda_kernels.cu): nvcc -c against the
# installed torch's headers, for the architectures in TORCH_CUDA_ARCH_LIST (default
# "8.0;9.0"). Needs nvcc, not a GPU and not a CUDA build of torch; nothing is linked
# or run. CI calls it where nvcc exists so the CUDA sources cannot rot silently.
#
# Usage: scripts/compile_cuda.sh [OUTPUT.o]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if [ "$#" -ge 1 ]; then
  exec "$PYTHON" -m elbo_kernels.ops._cpp --compile_cuda_only -o "$1"
fi
exec "$PYTHON" -m elbo_kernels.ops._cpp --compile_cuda_only
