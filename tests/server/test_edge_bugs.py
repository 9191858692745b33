"""The faults a hostile client found at the HTTP edge (issue 11), each reproduced against a real uvicorn on loopback.

Every test here failed before its fix: seeds that differ by a multiple of 2**32, random seeds above 2**53, {0, 1}
masks, same-aspect masks of another size, HEAD on GET routes, duplicate JSON keys, the OpenAPI document's own
examples, impossible configurations, and the NFE definition.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import png_bytes


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _image(resp: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(resp.json()["images"][0]["png_base64"]))))


# -- seeds -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [2**32, 2**40, 2**62])
def test_seeds_that_differ_by_a_multiple_of_2_32_give_different_images(client, offset):
    a = client.post("/generate", json={"class_id": 1, "steps": 1, "seed": 1}, headers={"Accept": "image/png"})
    b = client.post("/generate", json={"class_id": 1, "steps": 1, "seed": 1 + offset},
                    headers={"Accept": "image/png"})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.content != b.content


def test_default_seeds_survive_a_javascript_number(client):
    for _ in range(20):
        r = client.post("/generate", json={"class_id": 1, "steps": 1})
        assert r.status_code == 200, r.text
        assert 0 <= r.json()["seed"] <= 2**53 - 1, r.json()["seed"]


# -- /edit masks ---------------------------------------------------------------------------------------------------
def _edit(client, image: bytes, mask: bytes, **fields) -> httpx.Response:
    data = {"class_id": "1", "steps": "2", "strength": "1", "seed": "4", **fields}
    return client.post("/edit", files={"image": ("a.png", image, "image/png"), "mask": ("m.png", mask, "image/png")},
                       data=data)


def test_a_0_1_mask_selects_like_a_0_255_mask(client):
    image = png_bytes(color=(200, 40, 40))
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 1
    a = _edit(client, image, _png(Image.fromarray(half)))
    b = _edit(client, image, _png(Image.fromarray(half * 255)))
    nothing = _edit(client, image, _png(Image.new("L", (64, 64), 0)))
    assert a.status_code == b.status_code == nothing.status_code == 200, (a.text, b.text)
    assert np.array_equal(_image(a), _image(b))
    assert not np.array_equal(_image(a), _image(nothing))


def test_a_same_aspect_mask_of_another_size_is_resized_like_the_image(client):
    image = png_bytes(size=(250, 250), color=(30, 120, 200))
    big, exact = np.zeros((256, 256), np.uint8), np.zeros((250, 250), np.uint8)
    big[:, :128], exact[:, :125] = 255, 255
    a = _edit(client, image, _png(Image.fromarray(big)))
    b = _edit(client, image, _png(Image.fromarray(exact)))
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert np.array_equal(_image(a), _image(b))
    other_aspect = _edit(client, image, _png(Image.new("L", (256, 128), 255)))
    assert other_aspect.status_code == 422, other_aspect.text
    d = other_aspect.json()["detail"][0]
    assert d["field"] == "mask" and "256x128" in d["msg"] and "aspect" in d["msg"], d


# -- HEAD ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/models", "/metrics", "/health", "/ready", "/openapi.json", "/docs", "/redoc"])
def test_every_get_route_answers_head_without_a_body(client, path):
    get = client.get(path)
    head = client.head(path)
    assert get.status_code == 200 and head.status_code == 200, (path, head.status_code)
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_on_a_post_route_is_405_allowing_post(client):
    r = client.head("/generate")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    g = client.get("/generate")
    assert g.status_code == 405 and "GET" in g.json()["detail"]


def test_405_on_a_get_route_allows_get_and_head(client):
    r = client.post("/models", json={})
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD"}


# -- duplicate JSON keys ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,key", [
    ('{"class_id": 2, "class_id": 7, "steps": 1}', "class_id"),
    ('{"class_id": 2, "steps": 1, "steps": 2}', "steps"),
])
def test_duplicate_json_keys_are_422_naming_the_key(client, raw, key):
    r = client.post("/generate", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    d = r.json()["detail"][0]
    assert d["field"] == key and "more than once" in d["msg"], d


# -- NFE -------------------------------------------------------------------------------------------------------
def test_nfe_is_network_evaluations_per_image_everywhere(client):
    body = {"class_id": [1, 2], "steps": 3, "cfg": 4.0, "seed": 1}
    r = client.post("/generate", json=body)
    assert r.status_code == 200 and r.json()["nfe"] == 6, r.json()["nfe"]  # 3 guided steps = 6 per image
    r = client.post("/generate", json={"class_id": 1, "steps": 3, "cfg": 1.0, "seed": 1},
                    headers={"Accept": "image/png"})
    assert r.headers["x-nfe"] == "3"


# -- OpenAPI ---------------------------------------------------------------------------------------------------
def test_openapi_states_what_the_server_does(client):
    spec = client.get("/openapi.json").json()
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "application/json" not in metrics and any(t.startswith("text/plain") for t in metrics)
    for path in ("/encode", "/reconstruct", "/edit"):
        op = spec["paths"][path]["post"]
        names = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
        expected = {"/encode": {"format"}, "/reconstruct": set(), "/edit": {"class_id", "strength", "box", "seed"}}
        assert expected[path] <= names, (path, names)
    schemas = spec["components"]["schemas"]
    interp = json.dumps(schemas["InterpolateRequest"])
    assert "num_points" in schemas["InterpolateRequest"]["properties"]["t"]["description"]
    assert "not both" in interp
    cfg = json.dumps(schemas["GenerateRequest"]["properties"]["cfg"])
    assert "w <= 1 runs without guidance" not in cfg and "1 = no guidance" in cfg


def _examples(spec: dict):
    """(path, media type, example) for every request example the document carries."""
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {})
            for media, entry in content.items():
                schema = entry.get("schema", {})
                ref = schema.get("$ref", "").rsplit("/", 1)[-1]
                found = list(entry.get("examples", {}).values())
                found = [e["value"] for e in found] + ([entry["example"]] if "example" in entry else [])
                if ref:
                    found += spec["components"]["schemas"][ref].get("examples", [])
                for example in found:
                    yield method, path, media, example


def test_every_documented_request_example_is_accepted_as_it_stands(client):
    spec = client.get("/openapi.json").json()
    sent = 0
    for method, path, media, example in _examples(spec):
        if media == "application/json":
            r = client.request(method, path, json=example)
        else:
            continue  # binary examples are not carried (files)
        assert r.status_code < 300, (path, example, r.text)
        sent += 1
    assert sent >= 6
