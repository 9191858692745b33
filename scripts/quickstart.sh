#!/usr/bin/env bash
# The README's first command: set up from scratch, start the server, generate one image, stop the server.
#
#   bash scripts/quickstart.sh            # writes outputs/sample.png
#
# Idempotent: re-running reuses .venv (installs only what is missing). Environment knobs: SVG_PORT (default 8000),
# SVG_CLASS_ID (default 3), SVG_STEPS (default 25), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${SVG_PORT:-8000}"
CLASS_ID="${SVG_CLASS_ID:-3}"
STEPS="${SVG_STEPS:-25}"
MODEL_DIR="models/demo"
OUT="outputs/sample.png"

# 1. Virtual environment + install (torch pinned as in .ci/run).
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! .venv/bin/python -c "import server, svg, engines, fastapi, uvicorn" 2>/dev/null; then
  .venv/bin/pip install -q -e .
fi

# 2. The model: the embedded demo checkpoint, or a clearly labelled RANDOM one when it is absent.
if [ ! -f "$MODEL_DIR/sit.safetensors" ] || [ ! -f "$MODEL_DIR/autoencoder.safetensors" ] \
    || [ ! -f "$MODEL_DIR/latent_stats.safetensors" ]; then
  MODEL_DIR=".cache/svg-random-tiny"
  echo "####################################################################################" >&2
  echo "# WARNING: models/demo is absent. Using a tiny RANDOM checkpoint in $MODEL_DIR" >&2
  echo "# (not a trained model): the image will be NOISE. It only shows the stack works." >&2
  echo "####################################################################################" >&2
  if [ ! -f "$MODEL_DIR/sit.safetensors" ]; then
    .venv/bin/python -m svg.pipeline make-random --preset tiny "$MODEL_DIR" >/dev/null
  fi
fi

# 3. Start the server, wait for /ready (it answers 503 until the model is loaded and warmed up).
mkdir -p outputs
LOG="outputs/quickstart-server.log"
.venv/bin/python -m server --model-dir "$MODEL_DIR" --port "$PORT" --device auto >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "server exited; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "server not ready after 300 s; see $LOG" >&2; exit 1; }

# 4. One real request; Accept: image/png returns the PNG itself.
curl -sf -X POST "http://127.0.0.1:$PORT/generate" -H "Content-Type: application/json" -H "Accept: image/png" \
  -d "{\"class_id\": $CLASS_ID, \"steps\": $STEPS, \"cfg\": 4.0, \"seed\": 0}" -o "$OUT"
.venv/bin/python -c "from PIL import Image; im = Image.open('$OUT'); im.verify(); print('image', im.size)" >&2
echo "$(pwd)/$OUT"
