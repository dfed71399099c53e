#!/usr/bin/env bash
# The prepared device check: one run on one H100 / H200 in at most 8 minutes,
# everything written under $OUT (default ./gpu_check_out).
#
#   1. build the CUDA extension and print `elbo-kernels info`          (<= 130 s)
#   2. the GPU test subset (tests/test_gpu.py, marked gpu), and the per-op
#      backend tests (tests/test_op_*.py) on CUDA tensors (TRITON_INTERPRET=0)  (<= 180 s)
#   3. kernel benchmark: fused triton and cuda vs eager vs torch.compile,
#      forward + backward, fp32 and bf16, N = 8 and 432 of [N, 16, 64, 64],
#      GB/s against the copy bandwidth of the same run, peak memory     (<= 100 s)
#   4. SD3.5-Medium training step with random weights (bf16, LoRA r32,
#      gradient checkpointing): ELBO (K draws batched) vs the trajectory
#      estimator (T steps, CFG off and on), time and peak memory          (<= 70 s)
#
# Each step has its own time limit (the sum is under 8 minutes) and its log in
# $OUT; a failed or timed-out step is recorded in $OUT/summary.txt and the
# script goes on, so one run gives every answer it can. Exit status: the number
# of failed steps.
#
#   scripts/gpu_check.sh            on the GPU machine (pip install -e ".[test]" first)
#   scripts/gpu_check.sh --smoke    CPU, tiny shapes, a 2-layer transformer: what CI runs
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$OUT/torch_extensions}"
export ELBO_KERNELS_REQUIRE_CPP=1
if [ "$SMOKE" = 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
else
  export TRITON_INTERPRET=0 MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
fi
failures=0
: > "$OUT/summary.txt"

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  local verdict=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMED OUT"; elif [ $rc -ne 0 ]; then verdict="FAILED (exit $rc)"; fi
  [ "$verdict" = ok ] || failures=$((failures + 1))
  echo "$name: $verdict in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

{ "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"; } > "$OUT/machine.txt" 2>&1

step build 130 bash -c "'$PY' -m elbo_kernels.ops._cpp && elbo-kernels info"

if [ "$SMOKE" = 1 ]; then
  # No GPU: the subset must still collect (and skip); the benchmarks run on CPU at toy size.
  # torch.compile is left out of the CPU bench: its compile time is all it would measure here.
  step tests 300 "$PY" -m pytest -q -m gpu tests/test_gpu.py --junitxml="$OUT/pytest.xml"
  step bench 300 "$PY" benchmarks/bench_kernels.py --device cpu --quick --sizes 2 --repeats 1 \
    --variants eager cpu --out "$OUT/kernels.json"
  step train_step 300 "$PY" benchmarks/bench_train_step.py --smoke --device cpu --out "$OUT/train_step.json"
else
  # test_gpu.py is all marked gpu; the per-op files run their cuda and triton cases on the GPU
  # with TRITON_INTERPRET=0 (and their cpu cases, bar the cpu backend's torch.compile, which CI runs).
  step tests 180 "$PY" -m pytest -q --maxfail=20 tests/test_gpu.py tests/test_op_*.py tests/test_triton_launch.py \
    -k "not (test_ops_compile_fullgraph_and_match_eager and cpu)" --junitxml="$OUT/pytest.xml"
  step bench 100 "$PY" benchmarks/bench_kernels.py --device cuda --sizes 8 432 --dtypes float32 bfloat16 \
    --repeats 5 --out "$OUT/kernels.json"
  step train_step 70 "$PY" benchmarks/bench_train_step.py --device cuda --out "$OUT/train_step.json"
fi
echo "=== summary ($failures failed)"
cat "$OUT/summary.txt"
exit "$failures"
