"""Class names over real HTTP (``/models`` labels; a name wherever a class id goes; 422 with the closest names) and
the OpenAI-compatible ``POST /v1/images/generations``, driven by the official ``openai`` client from PyPI."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from server.labels import DIGITS, imagenet_classes
from tests.server.conftest import png_bytes


def test_models_lists_the_imagenet_names(client):
    info = client.get("/models").json()
    assert info["num_classes"] == 1000 and info["labels"] == list(imagenet_classes())
    assert info["labels"][1] == "goldfish" and info["labels"][207] == "golden retriever"
    assert len(DIGITS) == 10 and DIGITS[7] == "seven"


def test_a_name_is_accepted_wherever_a_class_id_is(client):
    base = {"steps": 2, "seed": 4}
    by_id = client.post("/generate", json={**base, "class_id": 207}, headers={"Accept": "image/png"})
    by_name = client.post("/generate", json={**base, "class_id": "Golden Retriever"}, headers={"Accept": "image/png"})
    assert by_id.status_code == by_name.status_code == 200 and by_id.content == by_name.content
    listed = client.post("/generate", json={**base, "class_id": ["goldfish", 207]}).json()
    assert [im["class_id"] for im in listed["images"]] == [1, 207]
    r = client.post("/interpolate", json={"steps": 2, "class_id": "tench", "seed_a": 1, "seed_b": 2, "num_points": 2})
    assert r.status_code == 200 and r.json()["images"][0]["class_id"] == 0
    files = {"image": ("a.png", png_bytes(), "image/png")}
    r = client.post("/edit", files=files, data={"class_id": "goldfish", "box": "[0, 0, 8, 8]", "steps": "2"})
    assert r.status_code == 200 and r.json()["images"][0]["class_id"] == 1


@pytest.mark.parametrize("name, suggestion", [("golden retreiver", "golden retriever"), ("goldfsh", "goldfish"),
                                              ("tabby cat", "tabby")])
def test_an_unknown_name_is_422_with_the_closest_names(client, name, suggestion):
    r = client.post("/generate", json={"class_id": name, "steps": 1})
    assert r.status_code == 422
    (entry,) = r.json()["detail"]
    assert entry["field"] == "class_id" and entry["value"] == name
    assert "unknown class name" in entry["msg"] and repr(suggestion) in entry["msg"]


def test_digit_strings_stay_refused(client):
    # Case B12: the JSON string "7" is not class 7 (ImageNet has no class named "7" either).
    assert client.post("/generate", json={"class_id": "7", "steps": 1}).status_code == 422


@pytest.fixture(scope="module")
def oai(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_openai_client_generates_pngs_of_the_model_size(client, oai):
    size = client.get("/models").json()["image_size"]
    out = oai.images.generate(prompt="goldfish", n=2, size=f"{size}x{size}", response_format="b64_json",
                              extra_body={"seed": 9})
    assert len(out.data) == 2 and out.created > 0
    for item in out.data:
        assert item.revised_prompt == "goldfish"
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert image.format == "PNG" and image.size == (size, size)
    # Same seed, class and default settings as /generate: the same bytes.
    plain = client.post("/generate", json={"class_id": 1, "num_images": 2, "seed": 9}).json()
    assert [im["png_base64"] for im in plain["images"]] == [d.b64_json for d in out.data]


def test_openai_client_sees_errors(client, oai):
    size = client.get("/models").json()["image_size"]
    with pytest.raises(openai.UnprocessableEntityError) as bad_name:
        oai.images.generate(prompt="goldfsh", size=f"{size}x{size}", response_format="b64_json")
    err = bad_name.value.body
    assert err["param"] == "prompt" and "goldfish" in err["message"]
    with pytest.raises(openai.UnprocessableEntityError) as bad_size:
        oai.images.generate(prompt="goldfish", size="1024x1024", response_format="b64_json")
    assert bad_size.value.body["param"] == "size"
    with pytest.raises(openai.UnprocessableEntityError) as url:
        oai.images.generate(prompt="goldfish", response_format="url")
    assert url.value.body["param"] == "response_format"
