#!/usr/bin/env bash
# GPU check row for case T19 (CUDA graphs that silently don't happen), kept apart from scripts/gpu_check.sh so that
# script can call it as one step:  scripts/gpu_check_cudagraphs.sh OUT_DIR
# Compiles the tiny SiT with buckets 1, 2, 4, 8 (mode reduce-overhead, bf16) and writes one CSV row per bucket,
# `check,role,bucket,graphed`, to OUT_DIR/cudagraphs.csv. Exit 0: every bucket CUDA-graphed; 1: a bucket was skipped
# (the log says which); 2: no GPU. Budget: about a minute (inductor compiles), capped at 180 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/gpu/cudagraphs}"
mkdir -p "$OUT"
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || { echo "no CUDA GPU" >&2; exit 2; }
timeout "${GPU_CHECK_CUDAGRAPHS_TIMEOUT:-180}" "$PY" -m engines.cudagraphs > "$OUT/cudagraphs.csv"
status=$?
cat "$OUT/cudagraphs.csv"
exit $status
