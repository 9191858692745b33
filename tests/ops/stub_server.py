"""A stand-in HTTP server for load-test plumbing tests (cases T25, T26): answers every SVG endpoint at once.

It is not the SVG server: it checks nothing and computes nothing. ``/generate`` fails with 500 on every
``fail_every``-th request (so 20 gives exactly 5 % failures), which is what the SLO exit-code test needs.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, {"status": "ok", "path": self.path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        if self.path == "/generate" and self.server.fail_every and next(self.server.counter) % self.server.fail_every == 0:
            self._answer(500, {"detail": "stub failure"})
            return
        self._answer(200, {"status": "ok", "path": self.path})


class StubServer:
    """Context manager: ``with StubServer(fail_every=20) as url: ...`` serves on 127.0.0.1 at a free port."""

    def __init__(self, fail_every: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fail_every = fail_every
        self.httpd.counter = itertools.count(1)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
