"""Slow clients (issue 11): a client that trickles its header or its body is closed at a configurable deadline,
and counted in ``svg_slow_client_closes_total{phase}``; a normal client on the same server is unaffected."""

from __future__ import annotations

import socket
import time

import pytest

from tests.server.conftest import metric_value, start_server

HEADER_S, BODY_S = 1.5, 2.0


@pytest.fixture(scope="module")
def slow(model_dir, tmp_path_factory):
    srv = start_server(model_dir, tmp_path_factory, "slow", max_rows=4, header_timeout_s=HEADER_S,
                       body_timeout_s=BODY_S, keep_alive_s=3)
    yield srv
    srv.stop()


def _trickle(port: int, data: bytes, every_s: float, give_up_s: float) -> tuple[float, bytes]:
    """Send ``data`` one byte per ``every_s`` until the server closes; (seconds until closed, what it answered)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=give_up_s)
    start = time.monotonic()
    answer = b""
    try:
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(every_s)
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except socket.timeout:
                pass
            if time.monotonic() - start > give_up_s:
                break
        sock.settimeout(1.0)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    finally:
        sock.close()
    return time.monotonic() - start, answer


def test_a_trickled_header_is_closed_at_the_header_deadline(slow):
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    took, _ = _trickle(slow.port, request, 0.25, give_up_s=20)
    assert took < HEADER_S + 2.0, took
    with slow.client() as c:
        text = c.get("/metrics").text
        assert metric_value(text, "svg_slow_client_closes_total", 'phase="headers"') >= 1


def test_a_trickled_body_is_closed_at_the_body_deadline(slow):
    head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", slow.port), timeout=20)
    start = time.monotonic()
    sock.sendall(head)
    answer = b""
    try:
        for _ in range(1000):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(0.25)
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except socket.timeout:
                pass
            if time.monotonic() - start > 20:
                break
    finally:
        sock.close()
    took = time.monotonic() - start
    assert took < BODY_S + 2.0, took
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    with slow.client() as c:
        assert metric_value(c.get("/metrics").text, "svg_slow_client_closes_total", 'phase="body"') >= 1
        assert c.post("/generate", json={"class_id": 1, "steps": 1}).status_code == 200
