"""The HTTP/1.1 connection protocol: uvicorn's httptools protocol plus a deadline for receiving a request's header.

uvicorn closes idle keep-alive connections (``keep_alive_s``) but waits forever for a header that trickles in one
byte at a time (slowloris), holding a connection and a file descriptor per such client. Here the header must be
complete within ``header_timeout_s`` of the connection's opening or of the request's first byte; otherwise the
connection is closed (no answer: the request never started) and counted in
``svg_slow_client_closes_total{phase="headers"}``. The body's deadline is enforced per request by
``server.app.GuardMiddleware`` (408).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("svg.server")


def header_deadline_protocol(header_timeout_s: float, on_close: Callable[[str], None]) -> type | None:
    """A uvicorn HTTP protocol class with the header deadline, or None when httptools is not installed (uvicorn then
    runs its default protocol without it, and a warning is logged).

    Args:
        header_timeout_s: seconds allowed for a complete request header. on_close: called with ``"headers"`` when
            a connection is closed for it (metrics).
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is part of uvicorn[standard], a declared dependency
        log.warning("httptools is not installed: no header deadline (slow clients are not closed)")
        return None

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # the next request on a keep-alive connection
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                on_close("headers")
                self.transport.close()

    return HeaderDeadlineProtocol
