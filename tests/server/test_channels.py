"""One set of parsing rules for every input channel (issue 11): a field value sent in a JSON body, as a multipart
text part, or as a query parameter next to a raw image body is accepted or refused the same way, with the same 422
entry (field, value, allowed range, message). Text channels carry the JSON spelling of a value; text that is not
JSON is a string. Table-driven over ``/edit``, which reads all three channels; ``strength`` 0 keeps the accepted
cases cheap (the reconstruction, no sampling) while every field is still validated."""

from __future__ import annotations

import base64
import json

import pytest

from tests.server.conftest import MAX_STEPS, png_bytes

IMAGE = png_bytes(size=(64, 64), color=(90, 140, 30))
BASE = {"class_id": 1, "box": [0, 0, 32, 64], "strength": 0.0, "steps": 2}

# (field, value, expected status); the value is a JSON value, spelled as JSON in the text channels
CASES = [
    ("class_id", 3, 200), ("class_id", 3.0, 422), ("class_id", "3", 422), ("class_id", True, 422),
    ("class_id", -1, 422), ("class_id", 10**6, 422), ("class_id", [3], 422),
    ("steps", 1, 200), ("steps", 0, 422), ("steps", MAX_STEPS + 1, 422), ("steps", 2.5, 422),
    ("cfg", 1.0, 200), ("cfg", 7.5, 200), ("cfg", "4.0", 422), ("cfg", -0.5, 422), ("cfg", 101.0, 422),
    ("strength", 1.5, 422), ("strength", None, 422), ("strength", "0", 422),
    ("seed", None, 200), ("seed", 2**63 - 1, 200), ("seed", 2**63, 422), ("seed", -1, 422), ("seed", 1.0, 422),
    ("region", "outside", 200), ("region", "middle", 422), ("region", 1, 422),
    ("box", [0, 0, 8, 8], 200), ("box", [0, 0, 8], 422), ("box", "0,0,8,8", 422), ("box", [0, 0, 8.0, 8], 422),
    ("timestep_shift", 0.0, 200), ("timestep_shift", 10.5, 422),
    ("sampler", "heun", 200), ("sampler", "ddim", 422), ("guidance_mode", "cfg_star", 200),
    ("colour", "red", 422),
]


def _text(value) -> str:
    """A value as a text channel spells it: JSON, except a string that is not itself JSON text."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def _answer(r) -> tuple[int, list]:
    if r.status_code == 200:
        return 200, []
    return r.status_code, [{k: d[k] for k in ("field", "value", "allowed", "msg")} for d in r.json()["detail"]]


def _send(client, channel: str, fields: dict):
    if channel == "json":
        return client.post("/edit", json={**fields, "image": base64.b64encode(IMAGE).decode()})
    texts = {k: _text(v) for k, v in fields.items()}
    if channel == "multipart":
        return client.post("/edit", files={"image": ("a.png", IMAGE, "image/png")}, data=texts)
    return client.post("/edit", params=texts, content=IMAGE, headers={"Content-Type": "image/png"})


@pytest.mark.parametrize("field,value,status", CASES, ids=[f"{f}={v!r}" for f, v, _ in CASES])
def test_every_channel_reads_a_value_the_same_way(client, field, value, status):
    fields = {**BASE, field: value}
    answers = {channel: _answer(_send(client, channel, fields)) for channel in ("json", "multipart", "query")}
    assert answers["json"][0] == status, answers["json"]
    assert answers["multipart"] == answers["json"], answers
    assert answers["query"] == answers["json"], answers
    if status == 422:
        entry = answers["json"][1][0]
        assert entry["field"].split(".")[0] == field and entry["allowed"], answers["json"]


@pytest.mark.parametrize("path,body", [("/generate", {"class_id": 1, "steps": 1}),
                                       ("/interpolate", {"class_id": 1, "seed_a": 1, "seed_b": 2, "steps": 1})])
def test_json_endpoints_refuse_fields_in_the_query_string(client, path, body):
    r = client.post(path, params={"steps": "2"}, json=body)
    assert r.status_code == 422, r.text
    d = r.json()["detail"][0]
    assert d["field"] == "steps" and "query" in d["msg"], d


@pytest.mark.parametrize("channel", ["multipart", "query"])
def test_a_field_given_twice_in_a_text_channel_is_422_naming_it(client, channel):
    if channel == "multipart":
        r = client.post("/edit", files=[("image", ("a.png", IMAGE, "image/png")), ("class_id", (None, "1")),
                                         ("class_id", (None, "2")), ("box", (None, "[0, 0, 8, 8]"))])
    else:
        r = client.post("/edit?class_id=1&class_id=2&box=[0,0,8,8]", content=IMAGE,
                        headers={"Content-Type": "image/png"})
    assert r.status_code == 422, r.text
    d = r.json()["detail"][0]
    assert d["field"] == "class_id" and "more than once" in d["msg"], d


@pytest.mark.parametrize("ctype,status", [
    ("application/json; charset=utf-8", 200), ("application/merge-patch+json", 200), ("APPLICATION/JSON", 200),
    ("application/json; charset=latin-1", 415), ("text/plain", 415), ("application/jsonx", 415),
])
def test_content_type_is_parsed_as_a_media_type(client, ctype, status):
    r = client.post("/generate", content=json.dumps({"class_id": 1, "steps": 1}), headers={"Content-Type": ctype})
    assert r.status_code == status, r.text


@pytest.mark.parametrize("accept,media", [
    ("image/png", "image/png"), ("image/*", "image/png"), ("*/*", "application/json"),
    ("image/png;q=0.5, application/json", "application/json"), ("application/json;q=0.2, image/png", "image/png"),
    ("application/json;q=0, */*", "image/png"), ("text/html, */*;q=0.8", "application/json"),
])
def test_accept_is_negotiated_with_q_values(client, accept, media):
    r = client.post("/generate", json={"class_id": 1, "steps": 1}, headers={"Accept": accept})
    assert r.status_code == 200 and r.headers["content-type"].startswith(media), (accept, r.headers)


def test_several_images_fall_back_to_json_when_it_is_acceptable(client):
    r = client.post("/generate", json={"class_id": [1, 2], "steps": 1},
                    headers={"Accept": "image/png, application/json;q=0.5"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
