"""Bodies a newcomer's review broke the server with: unparseable JSON of every kind, wrong content types, a client
that drops mid-upload, tiny timestep shifts, masks that do not fit the image, repeated multipart parts, and 422s
whose ``allowed`` must give the server's real limits. Real HTTP against the shared uvicorn (tiny random model)."""

from __future__ import annotations

import base64
import io
import socket
import time
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import MAX_STEPS, metric_value, png_bytes


def _detail(r) -> dict:
    return r.json()["detail"][0]


# -- every unparseable JSON body is a 422 naming the body (never 400 without a field, never 500) ---------------
BAD_JSON = {
    "huge_integer": b'{"class_id": ' + b"9" * 5000 + b"}",
    "deep_nesting": b'{"class_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not_utf8": b'{"class_id": "\xff\xfe"}',
    "trailing_comma": b'{"class_id": 1,}',
}


@pytest.mark.parametrize("path", ["/generate", "/interpolate", "/encode", "/reconstruct", "/edit"])
@pytest.mark.parametrize("kind", sorted(BAD_JSON))
def test_unparseable_json_is_422_naming_the_body(client, path, kind):
    r = client.post(path, content=BAD_JSON[kind], headers={"Content-Type": "application/json"})
    assert r.status_code == 422, (kind, r.status_code, r.text[:300])
    d = _detail(r)
    assert d["field"] == "body" and d["allowed"] and d["msg"].startswith("invalid JSON"), d
    assert "sys." not in d["msg"]  # no advice about Python internals


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path", ["/generate", "/interpolate"])
def test_json_sent_with_another_content_type_is_415_naming_it(client, path, ctype):
    r = client.post(path, content=b'{"class_id": 1, "seed_a": 1, "seed_b": 2}', headers={"Content-Type": ctype})
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type" and repr(ctype) in r.json()["detail"]


def test_json_without_a_content_type_is_415_saying_so(client):
    r = client.post("/generate", content=b'{"class_id": 1, "steps": 1, "seed": 3}')
    assert r.status_code == 415 and "Content-Type is missing" in r.json()["detail"], r.text


# -- limits in 422s are the server's own numbers --------------------------------------------------------------
def test_allowed_ranges_quote_the_configured_limits_and_the_models_classes(client):
    d = _detail(client.post("/generate", json={"class_id": 1, "steps": 0}))
    assert d["field"] == "steps" and f"1..{MAX_STEPS}" in d["allowed"], d
    n = client.get("/models").json()["num_classes"]
    d = _detail(client.post("/generate", json={"class_id": 1000}))
    assert d["field"] == "class_id" and f"0..{n - 1}" in d["allowed"], d
    assert f"less than or equal to {n - 1} (this model has {n} classes)" in d["msg"], d  # pydantic's own wording
    d = _detail(client.post("/generate", json={"class_id": 1, "colour": "red"}))
    assert d["field"] == "colour" and "class_id" in d["allowed"] and "timestep_shift" in d["allowed"], d


def test_conflicting_fields_name_the_field_and_what_is_allowed(client):
    d = _detail(client.post("/interpolate", json={"class_id": 1, "seed_a": 1, "seed_b": 2, "num_points": 3,
                                                  "t": [0, 1]}))
    assert d["field"] == "t" and "num_points or t, not both" in d["allowed"], d
    d = _detail(client.post("/generate", json={"class_id": [1, 2], "num_images": 3}))
    assert d["field"] == "num_images" and "len(class_id)=2" in d["msg"] and "len(class_id)" in d["allowed"], d


def test_box_message_names_the_value_once(client):
    r = client.post("/edit", files={"image": ("a.png", png_bytes(size=(64, 48)), "image/png")},
                    data={"class_id": "1", "box": "[-5, -5, 10, 10]"})
    d = _detail(r)
    assert r.status_code == 422 and d["field"] == "box" and d["msg"].count("box=") == 1 and "64x48" in d["msg"], d


# -- timestep shift: every allowed value gives a finite image --------------------------------------------------
@pytest.mark.parametrize("shift", [1e-300, 1e-20, 1e-7, 10.0])
def test_extreme_but_allowed_timestep_shifts_give_finite_images(client, shift):
    before = metric_value(client.get("/metrics").text, "svg_nonfinite_total")
    r = client.post("/generate", json={"class_id": 1, "steps": 2, "timestep_shift": shift, "seed": 0, "cfg": 1.0})
    assert r.status_code == 200, r.text
    assert metric_value(client.get("/metrics").text, "svg_nonfinite_total") == before


# -- a client that goes away mid-upload is a 499, not a server error -------------------------------------------
def _drop_mid_upload(url: str, path: str) -> None:
    """Send headers announcing 100 kB, 1 kB of body, then close the socket."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: image/png\r\n"
                     f"Content-Length: 100000\r\n\r\n".encode() + b"\x89PNG" + b"\0" * 1020)
        time.sleep(0.2)


@pytest.mark.parametrize("path", ["/encode", "/edit"])
def test_client_dropping_mid_upload_counts_499_not_500(server, client, path):
    def counts() -> tuple[float, float]:
        text = client.get("/metrics").text
        return tuple(metric_value(text, "svg_requests_total", f'endpoint="{path}",status="{code}"')
                     for code in ("499", "500"))

    before = counts()
    _drop_mid_upload(server.url, path)
    deadline = time.monotonic() + 10
    while counts()[0] == before[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = counts()
    assert after[0] == before[0] + 1 and after[1] == before[1], (before, after)
    assert "unhandled error" not in server.log_path.read_text()


# -- masks ----------------------------------------------------------------------------------------------------
def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_a_mask_of_another_size_is_422_naming_both_sizes(client):
    r = client.post("/edit", files={"image": ("a.png", png_bytes(size=(64, 48)), "image/png"),
                                    "mask": ("m.png", _png(Image.new("L", (10, 10), 255)), "image/png")},
                    data={"class_id": "1", "steps": "2"})
    assert r.status_code == 422, r.text
    d = _detail(r)
    assert d["field"] == "mask" and "10x10" in d["msg"] and "64x48" in d["msg"] and "64x48" in d["allowed"], d


def test_a_fully_transparent_mask_selects_nothing(client):
    image = png_bytes(color=(200, 40, 40))
    transparent_white = _png(Image.new("RGBA", (64, 64), (255, 255, 255, 0)))
    black = _png(Image.new("L", (64, 64), 0))
    outputs = []
    for mask in (transparent_white, black):
        r = client.post("/edit", files={"image": ("a.png", image, "image/png"), "mask": ("m.png", mask, "image/png")},
                        data={"class_id": "1", "steps": "2", "strength": "1", "seed": "4"})
        assert r.status_code == 200, r.text
        outputs.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png_base64"])))))
    assert np.array_equal(outputs[0], outputs[1])


# -- multipart and small things --------------------------------------------------------------------------------
def test_a_repeated_multipart_part_is_422_naming_it(client):
    r = client.post("/encode", files=[("image", ("a.png", png_bytes(), "image/png")),
                                      ("image", ("b.txt", b"junk", "text/plain"))])
    assert r.status_code == 422, r.text
    assert _detail(r)["field"] == "image" and "more than once" in _detail(r)["msg"]


def test_reconstruct_refuses_the_encode_only_format_field(client):
    r = client.post("/reconstruct", files={"image": ("a.png", png_bytes(), "image/png")}, data={"format": "npy"})
    assert r.status_code == 422, r.text
    assert _detail(r)["field"] == "format" and "not a field of this request" in _detail(r)["allowed"]


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_head_on_health_and_ready(client, path):
    r = client.head(path)
    assert r.status_code == 200 and r.content == b""
