# SVG inference server image.
#   docker build -t svg-serve .                      # the server (last stage), demo model baked in
#   docker run --gpus all -p 8000:8000 svg-serve     # serves models/demo at once
#   docker build --target loadtest -t svg-loadtest . # the Locust load-test image (docker-compose profile "loadtest")
#
# Stages: "build" installs torch and this project into a virtual environment; "runtime" copies only that
# environment onto a clean CUDA runtime base (no compilers, no pip cache), runs as a non-root user and checks /health.
# torch wheels carry their own CUDA libraries; the CUDA runtime base provides the matching user-space setup and the
# NVIDIA container labels, and needs a host driver that supports CUDA 12.8.

ARG CUDA_BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---- build: virtual environment with torch and the svg-serve package ------------------------------------------------
FROM ${CUDA_BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, in its own layer: it is by far the largest and changes least often.
RUN pip install "torch>=2.11" "torchvision>=0.26"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY svg ./svg
COPY server ./server
COPY kernels ./kernels
COPY engines ./engines
COPY training ./training
# nvidia-ml-py: GPU memory and utilisation gauges (svg_gpu_*) in /metrics.
RUN pip install . nvidia-ml-py

# ---- loadtest: Locust scenarios and the headless runner (imports nothing from the server) ----------------------------
FROM python:3.12-slim AS loadtest
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "locust>=2.29" "matplotlib>=3.8" "pillow>=10"
RUN useradd --uid 10001 --create-home locust
WORKDIR /home/locust
COPY --chown=locust loadtest ./loadtest
USER locust
ENTRYPOINT ["python", "-m", "loadtest.run"]

# ---- runtime: the server -------------------------------------------------------------------------------------------
FROM ${CUDA_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --create-home svg \
 && mkdir -p /models /cache/engines \
 && chown svg:svg /models /cache/engines
COPY --from=build /opt/venv /opt/venv
# The demo checkpoint, baked in so that `docker run` serves at once (see models/demo/README.md for its size).
COPY --chown=svg:svg models/demo /app/models/demo
# SVG_* are server/config.py fields (flag --x-y = variable SVG_X_Y), plus SVG_ENGINE_CACHE (TensorRT plans,
# engines/cache.py). The compile caches and the plans live on the engine volume so a restarted container does not
# recompile; the server checks at start-up that it can write them (exit 2 with the path and the fix otherwise).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SVG_MODEL_DIR=/app/models/demo \
    SVG_HOST=0.0.0.0 \
    SVG_PORT=8000 \
    SVG_DEVICE=auto \
    SVG_ENGINE_CACHE=/cache/engines \
    TORCHINDUCTOR_CACHE_DIR=/cache/engines/inductor \
    TRITON_CACHE_DIR=/cache/engines/triton
# /models: other weights (set SVG_MODEL_DIR=/models/<dir>); /cache/engines: compiled engines and kernel caches.
VOLUME ["/models", "/cache/engines"]
USER svg
WORKDIR /app
EXPOSE 8000
# Liveness only (/health); /ready turns 200 once the model is loaded and warmed up (start period covers that).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SVG_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["svg-serve"]
