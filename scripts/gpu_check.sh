#!/usr/bin/env bash
# The prepared device check (scripts/gpu_check.py; docs/gpu_check.md says how to run it on the
# GPU machine and what comes back). Exit status: the number of failed steps.
#
#   scripts/gpu_check.sh              on the GPU machine, from the copied tree (nothing installed)
#   scripts/gpu_check.sh --rehearse   CI: the same steps on CPU from a copy of `git ls-files`, no network
set -uo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
