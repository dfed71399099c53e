#!/usr/bin/env bash
# Prepares .whl/ (git-ignored): the wheels the GPU machine's image lacks, for its Python 3.12,
# so that scripts/gpu_check.py can install them there with --no-index (that machine reaches no
# package index). Today that is diffusers, for the training-step benchmark, and what it needs
# beyond the image (docs/gpu_check.md lists the image's packages): all pure-Python wheels, so
# the same files also serve the CPU rehearsal in CI.
#
#   scripts/gpu_wheels.sh            (then carry .whl with the device call)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=(
  "diffusers==0.42.1"        # the SD3 transformer of benchmarks/bench_train_step.py
  "importlib_metadata==10.2.0"  # diffusers needs it; the image has none
  "lazy-importer==0.1.0"     # importlib_metadata needs it on Python < 3.15
  "zipp==3.23.0"             # importlib_metadata needs >= 3.20; the image's version is not known
)
rm -rf .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
