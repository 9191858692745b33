"""The OpenAPI document: request bodies of every channel, response examples, and this server's live limits.

Endpoints read their own bodies (``server.parsing``), so their request bodies are declared here: JSON models by
``$ref``, multipart forms with the same fields, raw image bodies with the fields as query parameters. Once the model
is loaded, the ranges that depend on it and on the configuration (class labels, ``max_steps``, ``max_images``) are
written into the schemas, so a client (or a schema-driven fuzzer) sees exactly what the server accepts.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from server.limits import Limits
from server.negotiation import JSON, MULTIPART, NPY, OCTET, PNG
from server.schemas import (EXAMPLE_PNG_BASE64, EditJSON, EditParams, EncodeParams, ErrorResponse, GenerateRequest,
                            ImageJSON, ImagesResponse, InterpolateRequest, ReconstructJSON, ReconstructParams)

_RID = "3f2a9c0d5e6b4a7f8c1d2e3f4a5b6c7d"
_ERROR_TEXT = {
    400: ("invalid image", "invalid image", "image: invalid image (not a recognised image format)"),
    401: ("missing or wrong bearer token", "unauthorized",
          "missing or wrong bearer token (Authorization: Bearer <key>)"),
    406: ("Accept matches no type this answer can be", "not_acceptable",
          "Accept: image/jpeg matches nothing this answer can be; available: application/json, image/png"),
    408: ("the body arrived too slowly (body_timeout_s)", "request_timeout",
          "the request body did not arrive within body_timeout_s=60"),
    413: ("body or image too large", "image_too_large",
          "image: 20000x20000 = 400000000 pixels exceeds max_upload_pixels=40000000"),
    415: ("unsupported Content-Type", "unsupported_media_type",
          "Content-Type 'text/plain' is not supported here; send application/json"),
    422: ("invalid field (field, value, allowed range)", "validation_error",
          [{"field": "cfg", "value": "NaN", "allowed": "a number 0..100 (1 = no guidance)",
            "msg": "cfg=NaN: Input should be a finite number"}]),
    429: ("queue full; retry after Retry-After seconds", "queue_full", "queue full (64 requests waiting)"),
    503: ("model not loaded yet, or out of device memory; retry after Retry-After seconds", "not_ready",
          "model is still loading; poll GET /ready"),
    504: ("request deadline passed", "deadline_exceeded", "request_timeout_s=300 exceeded"),
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text, "content": {JSON: {
        "example": {"error": error, "request_id": _RID, "detail": detail}}}}
    for code, (text, error, detail) in _ERROR_TEXT.items()}
_IMAGES_EXAMPLE = {"request_id": _RID,
                   "images": [{"png_base64": "iVBORw0KGgoAAAANSUhEUgAA...", "seed": 0, "index": 0, "class_id": 7,
                               "t": None}],
                   "seed": 0, "steps": 25, "nfe": 50,
                   "timings": {"queue_s": 0.01, "sampling_s": 1.2, "decode_s": 0.05, "total_s": 1.3},
                   "params": {"class_id": 7, "steps": 25, "cfg": 4.0, "seed": 0}}
IMAGES_OUT = {200: {"content": {
    JSON: {"schema": {"$ref": "#/components/schemas/ImagesResponse"}, "example": _IMAGES_EXAMPLE},
    PNG: {"schema": {"type": "string", "format": "binary"}}},
    "description": "JSON with base64 PNGs, or one PNG when Accept prefers image/png and the request makes one image "
                   "(headers X-Seed, X-Steps, X-NFE = network evaluations per image, X-Timings)"}}
FEATURES_OUT = {200: {"description": "features of shape (C, h, w), float32; the type follows `format`, else Accept",
                      "content": {
                          NPY: {"schema": {"type": "string", "format": "binary"}},
                          OCTET: {"schema": {"type": "string", "format": "binary"}},
                          JSON: {"schema": {"type": "object", "properties": {
                              "request_id": {"type": "string"}, "shape": {"type": "array", "items": {
                                  "type": "integer"}}, "dtype": {"type": "string"}, "features": {"type": "array"}}},
                              "example": {"request_id": _RID, "shape": [104, 8, 8], "dtype": "float32",
                                          "features": [[[0.12, -0.5]]]}}}}}
METRICS_OUT = {200: {"description": "Prometheus text exposition format"}}
_RAW_IMAGE = {"schema": {"type": "string", "format": "binary"}}
_BINARY = {"type": "string", "format": "binary"}


def json_body_doc(model: type[BaseModel]) -> dict:
    """``openapi_extra`` of an endpoint whose body is the JSON ``model``."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": _ref(model)}}}}}


def _ref(model: type[BaseModel]) -> str:
    return f"#/components/schemas/{model.__name__}"


def _fields(model: type[BaseModel]) -> tuple[dict[str, Any], list[str]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema.get("properties", {}), schema.get("required", [])


def _query_parameters(model: type[BaseModel]) -> list[dict]:
    """The fields of ``model`` as query parameters (read only next to a raw image body). A value is read as the
    JSON it spells, so list fields are declared as JSON-encoded (``content: application/json``)."""
    props, required = _fields(model)
    params = []
    for name, prop in props.items():
        prop = {k: v for k, v in prop.items() if k != "default" or v is not None}
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
        entry = {"name": name, "in": "query", "required": name in required,
                 "description": prop.get("description", "") + " (query parameter: only with a raw image body)"}
        if prop.get("type") == "array":
            entry["content"] = {JSON: {"schema": prop}}
        else:
            entry["schema"] = prop
        params.append(entry)
    return params


def upload_body(json_model: type[BaseModel], form_model: type[BaseModel], files: tuple[str, ...] = ("image",),
                required: tuple[str, ...] = ("image",)) -> dict:
    """``openapi_extra`` of an upload endpoint: JSON (base64), multipart (file parts + fields), or a raw image body
    with the fields as query parameters."""
    props, req = _fields(form_model)
    multipart = {"type": "object", "required": [*required, *req],
                 "properties": {**{f: _BINARY for f in files}, **props}}
    return {
        "parameters": _query_parameters(form_model),
        "requestBody": {"required": True, "content": {
            JSON: {"schema": {"$ref": _ref(json_model)}},
            MULTIPART: {"schema": multipart},
            "image/*": _RAW_IMAGE}}}


def edit_body() -> dict:
    """``openapi_extra`` of ``POST /edit`` (mask as a second file part, base64 field, or a box)."""
    return upload_body(EditJSON, EditParams, files=("image", "mask"))


COMPONENT_MODELS = (GenerateRequest, InterpolateRequest, ImageJSON, ReconstructJSON, EditJSON, EncodeParams,
                    ReconstructParams, EditParams, ImagesResponse)


def with_limits(schema: dict, limits: Limits) -> dict:
    """A copy of the OpenAPI ``schema`` with the live limits written into every field they bound."""
    schema = copy.deepcopy(schema)
    integer_max = {"steps": limits.max_steps, "num_images": limits.max_images, "num_points": limits.max_images}
    if limits.max_class is not None:
        integer_max["class_id"] = limits.max_class
    list_max = {"class_id": limits.max_images, "t": limits.max_images}

    def visit(node: Any, name: str | None) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer" and name in integer_max:
                node["maximum"] = integer_max[name]
            if node.get("type") == "array" and name in list_max:
                node["maxItems"] = list_max[name]
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    for field, sub in value.items():
                        visit(sub, field)
                elif key == "parameters" and isinstance(value, list):
                    for param in value:
                        visit(param, param.get("name"))
                else:
                    visit(value, name)
        elif isinstance(node, list):
            for item in node:
                visit(item, name)

    visit(schema, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve the document with the body models as components and the live limits (re-made once the model is in)."""
    cache: dict[int | None, dict] = {}

    def openapi() -> dict:
        model = app.state.worker.model
        num_classes = model.num_classes if model is not None else None
        if num_classes not in cache:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for body in COMPONENT_MODELS:
                js = body.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(js.pop("$defs", {}))
                comps[body.__name__] = js
            cache[num_classes] = with_limits(schema, Limits.build(app.state.cfg, num_classes))
        return cache[num_classes]

    app.openapi = openapi


__all__ = ["ERRORS", "IMAGES_OUT", "FEATURES_OUT", "METRICS_OUT", "EXAMPLE_PNG_BASE64", "json_body_doc",
           "upload_body", "edit_body", "with_limits", "install_openapi"]
