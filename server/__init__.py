"""SVG inference server: FastAPI app, request schemas, step-level batching scheduler, device worker, metrics.

Layout: ``config`` (one validated configuration), ``schemas`` (HTTP models), ``scheduler`` (pure-Python step-level
continuous batching, no torch), ``worker`` (owns the device, calls ``svg.sampling.step_batch`` through an engine),
``images`` (robust upload decoding), ``app`` (the FastAPI factory), ``metrics`` (every Prometheus metric).
"""
