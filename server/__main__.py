"""``svg-serve`` / ``python -m server``: parse the configuration and run uvicorn with exactly one process."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server. Flags and ``SVG_*`` variables are listed by ``svg-serve --help``.

    Returns:
        0 after a clean shutdown, 2 for an invalid configuration (the message names the field and range).
    """
    from server.config import ConfigError, ServerConfig

    try:
        cfg = ServerConfig.from_sources(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:  # fail fast, before importing torch
        sys.stderr.write(f"svg-serve: invalid configuration: {exc}\n")
        return 2
    problem = preflight(cfg)
    if problem:
        sys.stderr.write(f"svg-serve: cannot start: {problem}\n")
        return 2
    import uvicorn

    from server.app import create_app
    from server.protocol import header_deadline_protocol

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg)
    closes = app.state.metrics.slow_client_closes_total
    protocol = header_deadline_protocol(cfg.header_timeout_s, lambda phase: closes.labels(phase=phase).inc())
    # workers is validated to 1: one process owns the device and the metrics registry (case B28).
    uvicorn.run(app, host=cfg.host, port=cfg.port, workers=1, log_level=cfg.log_level,
                timeout_graceful_shutdown=5, timeout_keep_alive=cfg.keep_alive_s, http=protocol or "auto")
    return 0


def preflight(cfg) -> str | None:
    """Problems that make the configuration unservable on this machine, found before the model loads.

    A GPU device without CUDA, or the TensorRT engine without the ``tensorrt`` package, stops the process at start-up
    with a message that says so (training_engines_ops.md T30; issue 6), instead of a server that never gets ready.

    Returns:
        A message, or None when the configuration can start here.
    """
    import importlib.util

    import torch

    device = cfg.resolved_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"device={cfg.device!r} but CUDA is not available on this machine (torch {torch.__version__}); " \
               "use --device cpu or auto"
    engines = {cfg.sit_engine, cfg.decoder_engine}
    if "tensorrt" in engines and importlib.util.find_spec("tensorrt") is None:
        return "engine 'tensorrt' was selected but the TensorRT Python package is not installed; " \
               "install tensorrt, or use --sit-engine/--decoder-engine compile or eager"
    if "tensorrt" in engines and not device.startswith("cuda"):
        return f"engine 'tensorrt' needs a CUDA device; got device={device!r}"
    from server.paths import check_writable  # every cache directory it will write (case T31)

    return check_writable(cfg, device)


if __name__ == "__main__":
    raise SystemExit(main())
