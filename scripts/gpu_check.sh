#!/usr/bin/env bash
# One command for a GPU machine (H200; torch 2.11 + triton 3.6; no fastapi; no pip installs needed):
#   1. the kernel tests on the GPU (compiled Triton, TRITON_INTERPRET unset; pytest if present, else a stand-in);
#   2. the kernel benchmark (python -m kernels.bench) at SVG-XL shapes;
#   3. end-to-end SVG-XL sampling with random weights, bf16, 25 Euler steps with guidance, batch 1/16/64,
#      SDPA vs Triton, reporting images/s and MFU (scripts/bench_sampling.py);
#   4. the served step (issue 10): SVG-XL bf16 through engines.create("compile") + engine.stepper(SlotBatch), CUDA
#      graphs: batch-1 p50 per image (25 guided steps; goal <= 100 ms), images/s and MFU at 64 images (goals >= 42
#      images/s, >= 50 % MFU), and whether a row is bit-identical alone and in the full batch
#      (scripts/bench_compiled_step.py -> compiled_step.csv);
#   5. hook: `python -m engines.bench --gpu --out DIR/engines.csv` when that module exists (the engines ladder),
#      with whatever is left of the 8-minute budget.
# Every result is CSV under benchmarks/gpu/<UTC date>_<gpu name>/ (summary.csv lists each step's status and time).
# Imports nothing from server/. Budget: <= 8 minutes on an H200; each step has its own timeout (override below).
#
# Usage: scripts/gpu_check.sh            (from anywhere; PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
unset TRITON_INTERPRET                       # compiled kernels on the GPU, never the interpreter
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"

# Caps, not estimates: about 9.5 minutes in all (the engines hook gets what is left of BUDGET, at least 30 s). Kernel tests are mostly Triton compile time on a fresh machine.
T_TESTS="${GPU_CHECK_TESTS_TIMEOUT:-200}"
T_KBENCH="${GPU_CHECK_KERNEL_BENCH_TIMEOUT:-90}"
T_SAMPLING="${GPU_CHECK_SAMPLING_TIMEOUT:-130}"
T_STEP="${GPU_CHECK_STEP_TIMEOUT:-150}"
BUDGET="${GPU_CHECK_BUDGET:-480}"   # seconds for the whole script

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch.cuda.is_available() is False; this script needs a CUDA GPU" >&2
  exit 2
fi

GPU_NAME="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))" | tr -cs 'A-Za-z0-9._' '-' | sed 's/-*$//')"
OUT="benchmarks/gpu/$(date -u +%Y-%m-%d)_${GPU_NAME}"
mkdir -p "$OUT"
echo "gpu_check: writing results to $OUT"

"$PY" - "$OUT/environment.csv" <<'EOF'
import csv, sys, platform, torch, triton
gpu = torch.cuda.get_device_properties(0)
rows = {"gpu": gpu.name, "capability": f"{gpu.major}.{gpu.minor}", "memory_gib": f"{gpu.total_memory / 2**30:.1f}",
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version()}
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f); w.writerow(["key", "value"]); w.writerows(rows.items())
EOF

echo "step,status,exit_code,seconds,output" > "$OUT/summary.csv"
FAILED=0
step() {  # step NAME TIMEOUT OUTPUT_FILE COMMAND...
  local name="$1" limit="$2" output="$3"; shift 3
  local start=$SECONDS rc status
  echo "gpu_check: [$name] (timeout ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124) status=timeout ;; *) status=failed ;; esac
  [ "$rc" -ne 0 ] && FAILED=1
  echo "$name,$status,$rc,$((SECONDS - start)),$output" >> "$OUT/summary.csv"
  echo "gpu_check: [$name] $status in $((SECONDS - start)) s; log $OUT/$name.log"
  tail -n 3 "$OUT/$name.log"
}

step kernel_tests "$T_TESTS" "kernel_tests.log" "$PY" scripts/run_kernel_tests.py
step kernel_bench "$T_KBENCH" "kernels.csv" "$PY" -m kernels.bench --out "$OUT/kernels.csv"
step sampling "$T_SAMPLING" "sampling.csv" \
  "$PY" scripts/bench_sampling.py --preset SVG-XL --batches 1 16 64 --steps 25 --cfg 6.0 --dtype bfloat16 \
  --backends sdpa triton --out "$OUT/sampling.csv"
step compiled_step "$T_STEP" "compiled_step.csv" \
  "$PY" scripts/bench_compiled_step.py --preset SVG-XL --dtype bfloat16 --images 64 --steps 25 --cfg 4.0 \
  --out "$OUT/compiled_step.csv"

# Hook for the engines ladder (eager / compile / CUDA graphs / TensorRT), given the rest of the budget.
if "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('engines.bench') else 1)" 2>/dev/null
then
  left=$((BUDGET - SECONDS)); [ "$left" -lt 30 ] && left=30
  step engines_bench "${GPU_CHECK_ENGINES_TIMEOUT:-$left}" "engines.csv" \
    "$PY" -m engines.bench --gpu --out "$OUT/engines.csv"
else
  echo "engines_bench,absent,,0," >> "$OUT/summary.csv"
fi

echo "gpu_check: done; summary:"
cat "$OUT/summary.csv"
exit $FAILED
