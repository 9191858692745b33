"""A stand-in HTTP server for load-test plumbing tests (cases T25, T26): answers every SVG endpoint at once.

It is not the SVG server: it checks nothing and computes nothing. ``/generate`` fails with 500 on every
``fail_every``-th request (so 20 gives exactly 5 % failures), which is what the SLO exit-code test needs. With
``api_key`` every path but ``/health`` wants ``Authorization: Bearer <api_key>`` (401 otherwise), as the server does.
``GET /models`` reports ``num_classes`` and ``image_size``; the stub records the side of every PNG uploaded and the
class label of every ``/generate`` (``upload_sizes``, ``generate_classes``).
"""

from __future__ import annotations

import itertools
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_sides(body: bytes) -> set[tuple[int, int]]:
    """(width, height) of every PNG inside ``body`` (a multipart upload or a raw image), from its IHDR chunk."""
    sides, start = set(), body.find(PNG_SIGNATURE)
    while start >= 0:
        sides.add(struct.unpack(">II", body[start + 16:start + 24]))
        start = body.find(PNG_SIGNATURE, start + 1)
    return sides


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

    def _authorised(self) -> bool:
        key = self.server.api_key
        if key is None or self.path == "/health" or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._answer(401, {"detail": "missing or wrong bearer token"})
        return False

    def do_GET(self) -> None:
        if self._authorised():
            extra = self.server.model if self.path == "/models" else {}
            self._answer(200, {"status": "ok", "path": self.path, **extra})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if not self._authorised():
            return
        self.server.upload_sizes.update(png_sides(body))
        if self.path == "/generate":
            self.server.generate_classes.add(json.loads(body)["class_id"])
        if self.path == "/generate" and self.server.fail_every and next(self.server.counter) % self.server.fail_every == 0:
            self._answer(500, {"detail": "stub failure"})
            return
        self._answer(200, {"status": "ok", "path": self.path})


class StubServer:
    """Context manager: ``with StubServer(fail_every=20) as url: ...`` serves on 127.0.0.1 at a free port."""

    def __init__(self, fail_every: int = 0, api_key: str | None = None, num_classes: int = 1000,
                 image_size: int = 256) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.model = {"num_classes": num_classes, "image_size": image_size}
        self.httpd.upload_sizes, self.httpd.generate_classes = set(), set()
        self.httpd.daemon_threads = True
        self.httpd.fail_every = fail_every
        self.httpd.counter = itertools.count(1)
        self.httpd.api_key = api_key
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
