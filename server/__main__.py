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
    import uvicorn

    from server.app import create_app

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # workers is validated to 1: one process owns the device and the metrics registry (case B28).
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, workers=1, log_level=cfg.log_level,
                timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
