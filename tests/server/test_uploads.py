"""Upload robustness over real HTTP: every PIL mode (B16), bombs (B20), non-images (B21), body limits (B22),
spooled uploads (B23), odd sizes (B37); plus unit tests of the decoding policy."""

from __future__ import annotations

import io
import os
import select
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server.config import ServerConfig
from server.images import BACKGROUND_RGB, ImageTooLarge, InvalidImage, decode_image
from tests.server.conftest import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, png_bytes

FEATURES = (36, 8, 8)


def encode(client, data: bytes, name="x.png"):
    return client.post("/encode", files={"image": (name, data, "application/octet-stream")})


def feature_shape(resp) -> tuple:
    assert resp.status_code == 200, resp.text
    return np.load(io.BytesIO(resp.content)).shape


def palette_with_trns() -> bytes:
    img = Image.new("P", (64, 64), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=1)
    return buf.getvalue()


def jpeg_bytes(size, quality=95, mode="RGB", seed=0, exif=None) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def bomb_png(width=20000, height=20000) -> bytes:
    """A ~50 KB PNG whose header declares width x height RGB pixels (the IDAT holds far less)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (50 * 1024 * 1024), 9)[: 50 * 1024]
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- B16: every mode gives the RGB feature shape ---------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: png_bytes("RGBA", (1, 1), (255, 0, 0, 128)), lambda: png_bytes("LA", (64, 64), (100, 50)),
    lambda: png_bytes("L", (64, 64), 77), palette_with_trns, lambda: png_bytes("I;16", (64, 64), 40000),
    lambda: png_bytes("1", (64, 64), 1), lambda: jpeg_bytes((64, 64), mode="CMYK"),
    lambda: png_bytes("RGB", (64, 64), (1, 2, 3)),
], ids=["rgba1x1", "la", "l", "p_trns", "i16", "bilevel", "cmyk_jpeg", "rgb"])
def test_every_mode_encodes_to_the_rgb_feature_shape(client, make):
    assert feature_shape(encode(client, make())) == FEATURES


# -- B37: odd sizes and aspect ratios --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(250, 250), (256, 384), (272, 272), (3, 700)])
def test_odd_sizes_encode_to_the_model_shape(client, size):
    assert feature_shape(encode(client, png_bytes("RGB", size, (9, 9, 9)))) == FEATURES


# -- B21: not an image, empty, truncated -----------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"just some text\n", b"", jpeg_bytes((128, 128))[: len(jpeg_bytes((128, 128))) // 2]],
                         ids=["txt", "empty", "truncated_jpeg"])
def test_non_images_are_400_invalid_image(client, data):
    r = encode(client, data, "x.txt")
    assert r.status_code == 400
    assert r.json()["error"] == "invalid image"


def test_bad_base64_is_400(client):
    r = client.post("/encode", json={"image": "@@not base64@@"})
    assert r.status_code == 400 and r.json()["error"] == "invalid image"


# -- B20: decompression bomb -----------------------------------------------------------------------------------
def test_decompression_bomb_is_413_from_the_header(client, server):
    data = bomb_png()
    assert len(data) < 60_000
    rss = server.rss_bytes()
    r = encode(client, data)
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    assert server.rss_bytes() - rss < 50 * 2**20  # nothing was decoded
    # 20000x20000 is above PIL's own bomb limit, which refuses first: the message still quotes OUR limit.
    assert f"max_upload_pixels={MAX_UPLOAD_PIXELS}" in r.json()["detail"] and "400000000" in r.json()["detail"]
    assert str(2 * Image.MAX_IMAGE_PIXELS) not in r.json()["detail"]
    small = encode(client, bomb_png(3000, 2000))  # above ours, below PIL's: our own header check
    assert small.status_code == 413 and f"max_upload_pixels={MAX_UPLOAD_PIXELS}" in small.json()["detail"]


def test_default_pixel_limit_is_below_pils():
    assert ServerConfig().max_upload_pixels < Image.MAX_IMAGE_PIXELS


# -- B22: body limits, declared and streamed -------------------------------------------------------------------
def _read_status(sock: socket.socket, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return data


def test_declared_oversized_body_is_413_before_reading(server, client):
    rss = server.rss_bytes()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /encode HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: 209715200\r\n\r\n" + os.urandom(65536))
        assert _read_status(s).startswith(b"HTTP/1.1 413")
    assert server.rss_bytes() - rss < 50 * 2**20
    assert encode(client, png_bytes()).status_code == 200  # others unaffected


def test_chunked_oversized_body_is_413_while_streaming(server, client):
    rss = server.rss_bytes()
    sent, status = 0, b""
    chunk = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /encode HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < 200 * 2**20:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
                if select.select([s], [], [], 0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = _read_status(s)
    assert status.startswith(b"HTTP/1.1 413"), status
    assert sent < 100 * 2**20  # refused long before the 200 MB were sent
    assert server.rss_bytes() - rss < 50 * 2**20
    assert encode(client, png_bytes()).status_code == 200


# -- B23: uploads spooled to disk still work -------------------------------------------------------------------
def test_large_and_small_jpeg_both_encode(client):
    big = jpeg_bytes((1100, 1100), quality=97, seed=1)
    small = jpeg_bytes((750, 750), quality=95, seed=2)
    assert 1.2 * 2**20 < len(big) < MAX_UPLOAD_BYTES and 0.3 * 2**20 < len(small) < 1 * 2**20
    assert feature_shape(encode(client, big, "big.jpg")) == FEATURES
    assert feature_shape(encode(client, small, "small.jpg")) == FEATURES


# -- decoding policy (unit) ------------------------------------------------------------------------------------
def test_alpha_is_composited_on_the_fixed_background():
    rgb = decode_image(png_bytes("RGBA", (2, 2), (255, 0, 0, 0)), max_pixels=100)
    assert rgb.shape == (2, 2, 3) and tuple(rgb[0, 0]) == BACKGROUND_RGB
    pal = decode_image(palette_with_trns(), max_pixels=10**6)
    assert tuple(pal[0, 0]) == BACKGROUND_RGB  # the tRNS colour is transparent


def test_sixteen_bit_is_scaled_not_clipped():
    rgb = decode_image(png_bytes("I;16", (4, 4), 65535), max_pixels=100)
    assert rgb.dtype == np.uint8 and int(rgb.max()) == 255
    mid = decode_image(png_bytes("I;16", (4, 4), 32768), max_pixels=100)
    assert 126 <= int(mid[0, 0, 0]) <= 129


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    rgb = decode_image(buf.getvalue(), max_pixels=10**6)
    assert rgb.shape == (40, 20, 3)  # displayed portrait
    assert rgb[2, :, 0].mean() > 200 and rgb[-3, :, 0].mean() < 50  # the strip is now on top


def test_limits_raise_the_right_errors():
    with pytest.raises(ImageTooLarge):
        decode_image(png_bytes("RGB", (100, 100)), max_pixels=9999)
    with pytest.raises(InvalidImage):
        decode_image(b"\x89PNG\r\n\x1a\nbroken", max_pixels=100)


def test_raw_image_body_with_query_parameters(client):
    r = client.post("/encode?format=json", content=png_bytes("RGB", (40, 30), (5, 6, 7)),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["shape"] == list(FEATURES)
    bad = client.post("/encode?format=zip", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "format"
