"""SVG inference server: FastAPI app, request schemas, step-level batching scheduler, device worker, metrics.

Layout: ``config`` (one validated configuration), ``schemas`` (HTTP models), ``scheduler`` (pure-Python step-level
continuous batching and the request lifecycle, no torch), ``jobs`` (the worker contract), ``worker`` (owns the
device and the slot batch, runs the engine's step), ``images`` (robust upload decoding), ``app`` (the FastAPI
factory), ``metrics`` (every Prometheus metric).
"""
