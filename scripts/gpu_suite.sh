#!/usr/bin/env bash
# The last call on a lent GPU machine: finish the bootstrap with the part this call
# carried, run benchmarks/gpu_suite.py, and put what should come back under $OUT.
#
#   bash scripts/gpu_suite.sh --device cuda          # extra arguments go to gpu_suite.py
#
# The suite's heavy outputs (trained checkpoints) stay in /tmp/gpu-run; $OUT gets
# benchmarks/RESULTS.md (this checkout's file with the new sections appended through
# benchmarks/_results.py), summary.md and any part's error trace.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="${RRPO_GPU_STAGE:-/tmp/rrpo-gpu}"
RUN="${RRPO_GPU_RUN:-/tmp/gpu-run}"
OUT="${OUT:-$RUN/out}"
PY="${PYTHON:-python3}"
RESULTS="${RRPO_GPU_RESULTS:-benchmarks/RESULTS.md}"  # a rehearsal on the CPU machine points it elsewhere
cd "$REPO"
bash scripts/gpu_bootstrap.sh --complete || exit $?
# shellcheck disable=SC1091
. "$STAGE/env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" benchmarks/gpu_suite.py --out "$RUN" --results "$RESULTS" "$@"
rc=$?
mkdir -p "$OUT"
cp "$RESULTS" "$RUN/summary.md" "$OUT/" 2>/dev/null
cp "$RUN"/*.error.txt "$OUT/" 2>/dev/null
exit $rc
